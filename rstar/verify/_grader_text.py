"""String side of the grader: find the answer in a model output, and clean an answer into a canonical LaTeX string.

Private helpers of `rstar.verify.answer` (the public API lives there). Everything here is pure string work: scans of a
whole output are linear (no regex that backtracks over a run of unclosed `$` or `\\boxed{`), and the regexes that
could be slower only see an extracted answer of bounded length, so a 1 MB output costs milliseconds and nothing
raises.

- `extract(text)`: the answer a text states: the last `\\boxed{}` (adjacent boxes joined: `\\boxed{1}, \\boxed{2}`),
  "Final Answer: ...", "The answer is ...", GSM8K "#### ...", our step format's `<output>` block, else the last LaTeX
  segment or number, whichever comes last. A short text that already looks like an answer is returned whole.
- `clean(answer)`: drop math delimiters, `\\left`/`\\right`, spacing commands, `\\text{}` units, degrees, currency,
  thousands separators; unify `\\dfrac`/`\\tfrac` -> `\\frac`, `\\mbox`/`\\mathrm`/... -> `\\text`, "and"/"or" -> ",";
  canonical numbers ("025" -> "25", "27.0" -> "27").
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from rstar.verify.boxed import BOXED_MARKERS

MAX_SCAN_CHARS = 100_000  # only the tail of a longer output is searched: answers come at the end
MAX_EXTRACT_CHARS = 4000  # the tail searched for a LaTeX segment or number when nothing states the answer
MAX_ANSWER_CHARS = 2000  # answers longer than this are compared as strings only

# ---------------------------------------------------------------------------------------------------------------------
# Brace matching and boxed groups

_KNOWN_COMMANDS = (
    "boxed|fbox|frac|dfrac|tfrac|cfrac|sqrt|text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|left|right|"
    "le|leq|ge|geq|lt|gt|ne|neq|pi|infty|in|cup|cap|pm|mp|cdot|times|div|circ|degree|sin|cos|tan|log|ln|exp|"
    "alpha|beta|gamma|theta|quad|qquad|dots|ldots|cdots|approx|sim|emptyset|varnothing|mathbb|operatorname|"
    "begin|end|displaystyle|overline|angle|triangle|sec|csc|cot|arcsin|arccos|arctan|binom|choose|%"
)
_DOUBLED_BACKSLASH = re.compile(r"\\\\(?=(?:" + _KNOWN_COMMANDS + r")(?![a-zA-Z]))")


def fix_doubled_backslashes(text: str) -> str:
    r"""`\\frac` -> `\frac` (a JSON double-escape slip), only before known commands and outside matrices, whose
    row breaks `\\` may be followed by a command."""
    if "\\\\" not in text or "matrix" in text or "array" in text:
        return text
    return _DOUBLED_BACKSLASH.sub(r"\\", text)


def _group_end(text: str, open_idx: int) -> int | None:
    """Index just after the brace group opening at `open_idx`, or None when it never closes."""
    depth = 0
    n = len(text)
    j = open_idx
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return None


_BOX_MARK = re.compile(r"\\boxed|\\fbox")


def _boxed_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every closed `\\boxed{...}` / `\\fbox{...}`, left to right; stops at an unclosed one."""
    spans: list[tuple[int, int, str]] = []
    i = 0
    n = len(text)
    for mark in _BOX_MARK.finditer(text):
        k = mark.start()
        if k < i:
            continue  # inside the previous box
        j = mark.end()
        while j < n and text[j] == " ":
            j += 1
        if j < n and text[j] == "{":
            end = _group_end(text, j)
            if end is None:
                return spans
            spans.append((k, end, text[j + 1 : end - 1].strip()))
            i = end
        elif mark.group(0) == "\\boxed" and j > mark.end() and j < n:
            end = j
            while end < n and not text[end].isspace() and text[end] not in "$,;":
                end += 1
            if end > j:
                spans.append((k, end, text[j:end]))
            i = end
    return spans


_SEPARATOR = re.compile(r"\b(?:and|or)\b|[,;]")


def _short_gap(gap: str) -> bool:
    """A gap between two boxes that only separates them (`$ and $`, `\\quad \\text{and} \\quad`, ` papers and `), not
    a sentence that moves on (`, on reflection the result is finally `)."""
    words = [w for w in re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}", gap) if w not in ("and", "or", "text", "quad")]
    return len(words) <= 3 and ". " not in gap


def last_boxed_group(text: str) -> str | None:
    """The last boxed answer; boxes right before it join it when only a separator stands between them.

    `\\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}` -> "-2, 1" (a model boxing each root separately), while
    `\\boxed{1} no no no \\boxed{2}` -> "2". Math-Verify's rule (a gap under 10 characters, or under 70 with "and" /
    "or" / "," / ";" in it) plus: at most three other words and no sentence end in the gap. Identical neighbours
    count once.
    """
    spans = _boxed_spans(text)
    if not spans:
        return None
    group = [spans[-1]]
    for prev in reversed(spans[:-1]):
        gap = text[prev[1] : group[-1][0]]
        if len(gap) < 10 or (len(gap) < 70 and _SEPARATOR.search(gap) and prev[2] != group[-1][2] and _short_gap(gap)):
            group.append(prev)
        else:
            break
    contents: list[str] = []
    for _, _, c in reversed(group):
        if not contents or contents[-1] != c:
            contents.append(c)
    return ", ".join(contents)


# ---------------------------------------------------------------------------------------------------------------------
# Extraction from a full output

_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")
_SEPARATOR_WORDS = {"and", "or", "pct", "percent", "percentage", "degrees", "degree", "dollars", "cents"}
_TEXT_ARG = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{[^{}]*\}")
_NUMBER_IN_TEXT = re.compile(
    r"(?<![\w.^_])[-−]?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:[.,]\d+)?)(?:/\d+(?:\.\d+)?)?(?:\s*(?:%|\\%))?(?!\.?\d|,\d|[\^_])"
)
_ANCHORS = (
    "final answer is",
    "final answer:",
    "the answer is",
    "answer is",
    "answer:",
    "**answer**",
)
_GSM8K = re.compile(r"####\s*([^\n]+)")
_OUTPUT_BLOCK = re.compile(r"<output>(.*?)(?:<end_of_output>|$)", re.DOTALL)


def prose_words(text: str) -> int:
    """How many plain words (2+ letters, outside LaTeX commands and `\\text{}`) a text has."""
    stripped = _TEXT_ARG.sub(" ", text)
    return sum(1 for w in _WORD.findall(stripped) if w.lower() not in _SEPARATOR_WORDS)


def looks_like_answer(text: str) -> bool:
    """A short string with at most two plain words: an answer already (`28 percent`, `\\text{Evelyn}`, `(1, 2)`)."""
    t = text.strip()
    if not t or len(t) > 300 or "\n" in t.strip():
        return False
    if "<output>" in t or "<answer>" in t or "####" in t:
        return False
    low = t.lower()
    if any(a in low for a in ("answer", "therefore", "thus")):
        return False
    words = prose_words(t)
    if words == 0:
        return True
    # "28 percent", "\text{Evelyn}", "odd" are answers; "Soucis : 2,74 $ a.." is prose around a number
    return words <= 2 and not _NUMBER_IN_TEXT.search(_TEXT_ARG.sub(" ", t)) and _last_math_segment(t) is None


def strip_delimiters(text: str) -> str:
    """Outer `$...$`, `$$...$$`, `\\(...\\)`, `\\[...\\]`, trailing punctuation and "I hope it is correct"."""
    t = text.strip()
    t = re.sub(r"(?i)\s*I hope it is correct\.?\s*$", "", t)
    for _ in range(3):
        t = t.strip().rstrip(".,;:!").strip()
        for o, c in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
            if t.startswith(o) and t.endswith(c) and len(t) >= len(o) + len(c):
                t = t[len(o) : len(t) - len(c)].strip()
                break
    return t


def _sentence(text: str) -> str:
    """The answer phrase right after an anchor: up to the end of the line or of the sentence."""
    t = text.lstrip(" :*\t")
    nl = t.find("\n")
    if nl >= 0:
        t = t[:nl]
    cut = re.search(r"(?i)\.?\s*I hope it is correct|<\|im_|\.\s+(?=[A-Z])|\.$", t)
    if cut:
        t = t[: cut.start()]
    return t.strip()


def _prev_dollar(text: str, end: int) -> int:
    """Index of the last unescaped `$` before `end`, or -1 (`\\$` is currency, not a delimiter)."""
    j = end
    while True:
        j = text.rfind("$", 0, j)
        if j <= 0 or text[j - 1] != "\\":
            return j


def _last_math_segment(text: str) -> tuple[int, str] | None:
    """(end, body) of the last `$...$`, `$$...$$`, `\\(...\\)` or `\\[...\\]` segment; linear time (no regex
    backtracking on a run of unclosed openers)."""
    best: tuple[int, str] | None = None
    for o, c in (("\\(", "\\)"), ("\\[", "\\]")):
        k = text.rfind(c)
        if k > 0:
            j = text.rfind(o, 0, k)
            if j >= 0 and text[j + 2 : k].strip() and (best is None or k + 2 > best[0]):
                best = (k + 2, text[j + 2 : k].strip())
    k = _prev_dollar(text, len(text))
    if k > 0:
        if text[k - 1] == "$":
            j = text.rfind("$$", 0, k - 1)
            body = text[j + 2 : k - 1] if j >= 0 else ""
        else:
            j = _prev_dollar(text, k)
            body = text[j + 1 : k] if j >= 0 else ""
        if body.strip() and (best is None or k + 1 > best[0]):
            best = (k + 1, body.strip())
    return best


def _last_segment_or_number(text: str) -> str | None:
    """The last LaTeX segment or plain number in the text, whichever ends later."""
    tail = text[-MAX_EXTRACT_CHARS:]
    seg = _last_math_segment(tail)
    num_end, num = -1, None
    for m in _NUMBER_IN_TEXT.finditer(tail):
        num_end, num = m.end(), m.group(0)
    if seg is not None and (num is None or seg[0] >= num_end):
        return seg[1]
    return num


def _unclosed_box(text: str, start: int) -> int | None:
    """Where a `\\boxed{` that never closes begins (after `start`), or None."""
    for m in BOXED_MARKERS:
        k = text.find(m + "{", start)
        if k >= 0 and _group_end(text, k + len(m)) is None:
            return k
    return None


def _from_anchor(text: str) -> tuple[int, str | None]:
    """(position, answer) of the last "final answer is" / "the answer is" / "answer:" phrase; (-1, None) if none."""
    low = text.lower()
    best, anchor = -1, ""
    for a in _ANCHORS:
        k = low.rfind(a)
        if k > best:
            best, anchor = k, a
    if best < 0:
        return -1, None
    phrase = _sentence(text[best + len(anchor) :])
    phrase = re.sub(r'^\\?["“]|\\?["”]$', "", phrase.strip()).strip()
    if not phrase:
        return best, None
    if looks_like_answer(phrase):
        return best, strip_delimiters(phrase) or None
    got = _last_segment_or_number(phrase)
    return best, (strip_delimiters(got) or None) if got else None


def extract(text: str) -> str | None:
    """The answer a model output states, as a short string (delimiters stripped), or None."""
    if not text or not text.strip():
        return None
    text = fix_doubled_backslashes(text[-MAX_SCAN_CHARS:])
    if any(m in text for m in BOXED_MARKERS):
        spans = _boxed_spans(text)
        cut = _unclosed_box(text, spans[-1][1] if spans else 0)
        if cut is not None:  # generation stopped inside a box: grade what came before it
            text = text[:cut]
        if spans:
            boxed = last_boxed_group(text)
            # "\boxed{255} ... Final Answer: The final answer is $10,455$": a later explicit final answer wins
            _, anchored = _from_anchor(text[spans[-1][1] :])
            if anchored is not None:
                return anchored
            return strip_delimiters(boxed or "") or None
    if "<output>" in text:
        blocks = _OUTPUT_BLOCK.findall(text[-(MAX_EXTRACT_CHARS * 4) :])
        if blocks:
            from rstar.verify.steps import answer_from_output

            got = answer_from_output(blocks[-1])
            if got:
                return strip_delimiters(got) or None
    gsm = list(_GSM8K.finditer(text[-MAX_EXTRACT_CHARS:]))
    if gsm:
        return strip_delimiters(gsm[-1].group(1)) or None
    if looks_like_answer(text):
        return strip_delimiters(text) or None
    _, anchored = _from_anchor(text)
    if anchored is not None:
        return anchored
    got = _last_segment_or_number(text)
    return strip_delimiters(got) if got else None


# ---------------------------------------------------------------------------------------------------------------------
# Top-level splitting (bracket-aware)


def _bracket_events(text: str, start: int = 0) -> Iterator[tuple[int, int]]:
    """(index, depth change) for every bracket outside commands: `( [ { \\{ \\begin` open, `) ] } \\} \\end` close;
    (index, 0) for every other character that is not part of a command or an escape."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if text.startswith("\\begin", i):
                yield i, 1
                i += 6
            elif text.startswith("\\end", i) and not text[i + 4 : i + 5].isalpha():
                yield i, -1
                i += 4
            elif i + 1 < n and text[i + 1] in "{}":
                yield i, 1 if text[i + 1] == "{" else -1
                i += 2
            elif i + 1 < n and text[i + 1].isalpha():
                i += 1
                while i < n and text[i].isalpha():
                    i += 1
            else:
                i += 2
            continue
        yield i, (1 if c in "([{" else -1 if c in ")]}" else 0)
        i += 1


def split_top(text: str, seps: str = ",;") -> list[str]:
    """Split at separators that are outside every bracket, brace and `\\begin...\\end` environment.

    Brackets are counted without matching kinds, so half-open intervals `[0,1)` nest correctly.
    """
    parts: list[str] = []
    depth = 0
    start = 0
    for i, d in _bracket_events(text):
        depth += d
        if d == 0 and depth == 0 and text[i] in seps:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def group_end(text: str, open_idx: int) -> int | None:
    """Index after the bracket group (any kind, counted together) opening at `open_idx`; None if it never closes."""
    depth = 0
    for i, d in _bracket_events(text, open_idx):
        depth += d
        if depth == 0:
            if d == 0:
                return None  # the character at open_idx is not a bracket
            return i + (2 if text[i] == "\\" else 1) if not text.startswith("\\end", i) else _env_end(text, i)
    return None


def _env_end(text: str, i: int) -> int:
    """Index after `\\end{name}` starting at i."""
    j = text.find("}", i)
    return len(text) if j < 0 else j + 1


# ---------------------------------------------------------------------------------------------------------------------
# Cleaning an answer into canonical LaTeX

_SPACING = re.compile(
    r"(?<!\\)(?:\\[,;:!>]|\\quad(?![a-zA-Z])|\\qquad(?![a-zA-Z])|\\displaystyle|\\textstyle|\\limits|~|\\ )"
)
_LEFT_RIGHT = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![a-zA-Z])\s*"
    r"(\\[{}|]|[()\[\]|.]|\\[lr]?vert|\\langle|\\rangle|\\lbrace|\\rbrace|\\lbrack|\\rbrack)?"
)
_FRAC = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_TEXT_CMDS = re.compile(
    r"\\(?:textbf|textit|textrm|textnormal|textup|texttt|textsf|mathrm|mathbf|mathit|mathsf|mathtt|mbox|hbox)(?![a-zA-Z])"
)
_TEXT_AND = re.compile(r"\s*,?\s*\\text\s*\{\s*,?\s*(?:and|or)\s*\}\s*,?\s*")
_WORD_AND = re.compile(r"\s*,?\s*(?<![a-zA-Z\\])(?:and|or)(?![a-zA-Z])\s*")
_DEGREES = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])|°|\\degree(?![a-zA-Z])|"
    r"(?<![a-zA-Z\\])degrees?(?![a-zA-Z])|\\text\{\s*degrees?\s*\}"
)
_PERCENT_WORDS = re.compile(
    r"\s*\\text\s*\{\s*(?:percentage|percent|pct)\s*\}|\s*(?<![a-zA-Z\\])(?:percentage|percent|pct)(?![a-zA-Z])"
)
_CURRENCY = re.compile(
    r"\\\$|€|£|¥|₹|\\euro(?![a-zA-Z])|\\pounds(?![a-zA-Z])|(?<![a-zA-Z\\])(?:dollars?|USD)(?![a-zA-Z])"
)
_THOUSANDS_MARKUP = re.compile(r"(?<=\d)(?:,\\!|\{,\}|\\,|,\\,)\s*(?=\d{3}(?!\d))")
_THOUSANDS_COMMA = re.compile(r"^[-+]?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?%?$")
_THOUSANDS_SPACE = re.compile(r"^[-+]?\d{1,3}(?: \d{3})+(?:\.\d+)?%?$")
_UNIT_TEXT = re.compile(r"^(?P<v>.*?[\d}).a-zA-Z])\s*\\text\s*\{[^{}]*\}(?:\s*\^\s*\{?\d\}?)?$")
_UNIT_WORDS = re.compile(r"^(?P<v>[-+]?[\d.]*\d(?:\s*%)?)\s+(?:[a-zA-Z]{2,}\.?\s*){1,3}(?:\^\s*\{?\d\}?)?$")
_WHOLE_TEXT = re.compile(r"^\\text\s*\{([^{}]*)\}$")
_MATRIX_ENV = re.compile(r"\\begin\s*\{(?:[pbB]?matrix|smallmatrix)\}|\\begin\s*\{array\}\s*\{[^{}]*\}")
_MATRIX_END = re.compile(r"\\end\s*\{(?:[pbB]?matrix|smallmatrix|array)\}")
_RELATIONS = (
    (re.compile(r"\\geq?(?![a-zA-Z])|\\geqslant(?![a-zA-Z])|>=|≥"), r"\\ge "),
    (re.compile(r"\\leq?(?![a-zA-Z])|\\leqslant(?![a-zA-Z])|<=|≤"), r"\\le "),
    (re.compile(r"\\neq?(?![a-zA-Z])|!=|≠"), r"\\ne "),
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
)
_FRAC_SHORT = (
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\s*\{([^{}]*)\}\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\sqrt\s*(\d)"), r"\\sqrt{\1}"),
    (re.compile(r"\\sqrt\s+([a-zA-Z])"), r"\\sqrt{\1}"),
)
_DECIMAL = re.compile(r"^([-+]?)(\d*)\.(\d+)(%?)$|^([-+]?)(\d+)(%?)$")


def canonical_number(token: str) -> str:
    """ "025" -> "25", "27.0" -> "27", ".5" -> "0.5", "-0" -> "0", "+3" -> "3"; other strings unchanged."""
    m = _DECIMAL.match(token)
    if not m:
        return token
    if m.group(6) is not None:
        sign, whole, frac, pct = m.group(5), m.group(6), "", m.group(7)
    else:
        sign, whole, frac, pct = m.group(1), m.group(2), m.group(3), m.group(4)
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + ("." + frac if frac else "")
    if sign == "-" and out != "0":
        out = "-" + out
    return out + pct


def _matrix_canonical(text: str) -> str:
    """Every matrix environment (p/b/B-matrix, `[\\begin{array}...]`) becomes `\\begin{pmatrix}...\\end{pmatrix}`."""
    t = re.sub(r"[\[(]\s*(\\begin\s*\{array\})", r"\1", text)
    t = re.sub(r"(\\end\s*\{array\})\s*[\])]", r"\1", t)
    t = _MATRIX_ENV.sub(r"\\begin{pmatrix}", t)
    t = _MATRIX_END.sub(r"\\end{pmatrix}", t)
    return re.sub(r"\\\\\s*\\end\{pmatrix\}", r"\\end{pmatrix}", t)  # a trailing row break


def _squeeze_spaces(text: str) -> str:
    """Spaces matter only between two letters (`\\sin b`, `\\pi r`) and after a list comma (`1, 2` is a list, `1,000`
    may be a number); every other space goes."""

    def repl(m: re.Match[str]) -> str:
        before = text[m.start() - 1] if m.start() > 0 else ""
        after = text[m.end()] if m.end() < len(text) else ""
        if before == ",":
            return " "
        if before.isalpha() and after.isalpha():
            return " "
        return ""

    return re.sub(r"\s+", repl, text)


def _clean_item(item: str) -> str:
    """Per list element: strip a trailing unit and unwrap an all-text answer."""
    t = item.strip()
    for _ in range(2):  # "15 \text{cm}^2", "125 miles", "0.06 \text{ yuan}"
        if _WHOLE_TEXT.match(t):
            break
        m = _UNIT_TEXT.match(t) or _UNIT_WORDS.match(t)
        if m and m.group("v").strip():
            t = m.group("v").strip()
    m = _WHOLE_TEXT.match(t)
    if m:
        t = m.group(1).strip()
    return t


_OPENERS = {"(": ")", "[": "]", "{": "}"}


def _clean_items(text: str, levels: int) -> str:
    """`_clean_item` on each top-level element, and on the elements of a bracketed list (`{35 cm, 4}`)."""
    items = split_top(text) if ("," in text or ";" in text) else [text]
    out = []
    for item in items:
        t = _clean_item(item)
        if levels > 1 and len(t) >= 2 and t[0] in _OPENERS and group_end(t, 0) == len(t) and "," in t:
            t = t[0] + _clean_items(t[1:-1], levels - 1) + t[-1]
        out.append(t)
    if out == items:
        return text  # keep the written separators: "1,22" may be a number, "1, 22" is a list
    return ", ".join(t for t in out if t)


_PY_HINT = re.compile(r"\*\*|(?<![\\a-zA-Z])(?:sqrt|exp|Abs|pi|oo|I|E)(?![a-zA-Z])")
_PY_FUNC = re.compile(r"(?<![\\a-zA-Z])(sqrt|exp|Abs)\(")
_PY_POW = re.compile(r"\*\*\s*(\((?:[^()]|\([^()]*\))*\)|[\w.]+)")


def _pythonic(text: str) -> str:
    """Python / sympy printing -> LaTeX: `x**2` -> `x^{2}`, `sqrt(2)` -> `\\sqrt{2}`, `exp(2)` -> `e^{2}`,
    `Abs(x)` -> `|x|`, `pi` -> `\\pi`, `oo` -> `\\infty`, `I` -> `i` (the policy's code prints these)."""
    if not _PY_HINT.search(text):
        return text
    out = []
    i = 0
    for m in _PY_FUNC.finditer(text):
        if m.start() < i:
            continue
        close = group_end(text, m.end() - 1)
        if close is None:
            continue
        inner = _pythonic(text[m.end() : close - 1])
        name = m.group(1)
        out.append(text[i : m.start()])
        out.append({"sqrt": "\\sqrt{%s}", "exp": "e^{%s}", "Abs": "|%s|"}[name] % inner)
        i = close
    t = "".join(out) + text[i:]
    t = _PY_POW.sub(lambda m: "^{" + (m.group(1)[1:-1] if m.group(1).startswith("(") else m.group(1)) + "}", t)
    t = re.sub(r"(?<=\d)\s*\*\s*(?=[a-zA-Z\\])", "", t)  # 5*I -> 5I: implicit product, as LaTeX writes it
    t = re.sub(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])", r"\\pi", t)
    t = re.sub(r"(?<![\\a-zA-Z])oo(?![a-zA-Z])", r"\\infty", t)
    if re.search(r"[\d*+/^-]", t):  # `I` and `E` as constants only inside an expression, never a lone choice letter
        t = re.sub(r"(?<![\\a-zA-Z])I(?![a-zA-Z])", "i", t)
        t = re.sub(r"(?<![\\a-zA-Z_])E(?![a-zA-Z(_])", "e", t)
    return t


def clean(answer: str) -> str:
    """Canonical LaTeX for an answer (see module docstring). Never raises."""
    t = answer.strip()
    if not t:
        return ""
    if len(t) > MAX_ANSWER_CHARS:
        return " ".join(t.split())
    t = t.replace("\\\x0c", "\\f").replace("\x0c", "\\f")  # "\frac" whose "\f" became a form feed
    t = fix_doubled_backslashes(t)
    if any(m in t for m in BOXED_MARKERS):
        boxed = last_boxed_group(t)
        if boxed is not None:
            t = boxed
    t = t.replace("\\$", "\x00")  # escaped dollars are currency, the others math delimiters
    t = t.replace("$", " ").replace("\\(", " ").replace("\\)", " ").replace("\\[", " ").replace("\\]", " ")
    t = t.replace("\x00", "\\$")
    t = re.sub(r"[\s\x00-\x1f]+", " ", t).strip()
    t = _pythonic(t)
    t = re.sub(r"(?i)\s*I hope it is correct\.?$", "", t)
    t = _LEFT_RIGHT.sub(lambda m: m.group(1) if m.group(1) and m.group(1) != "." else "", t)
    t = t.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("\\lbrack", "[").replace("\\rbrack", "]")
    t = _THOUSANDS_MARKUP.sub("", t)
    t = _SPACING.sub(" ", t)
    t = _FRAC.sub(r"\\frac", t)
    for pat, rep in _FRAC_SHORT:
        t = pat.sub(rep, t)
    t = _TEXT_CMDS.sub(r"\\text", t)
    t = re.sub(r"\\text\s*\{\s*\}", "", t)
    t = _TEXT_AND.sub(", ", t)
    t = _WORD_AND.sub(", ", t)
    t = _DEGREES.sub("", t)
    t = t.replace("\\%", "%")
    t = _PERCENT_WORDS.sub("%", t)
    t = _CURRENCY.sub("", t)
    for pat, rep in _RELATIONS:
        t = pat.sub(rep, t)
    t = t.replace("−", "-").replace("\\dots", "\\ldots").replace("\\cdots", "\\ldots")
    if "\\begin" in t:
        t = _matrix_canonical(t)
    t = " ".join(t.split()).strip(" ,;:").rstrip(" .")
    while t.endswith("\\") and not t.endswith("\\\\"):
        t = t[:-1].rstrip(" ,;:.")
    if _THOUSANDS_COMMA.match(t):
        t = t.replace(",", "")
    elif _THOUSANDS_SPACE.match(t):
        t = t.replace(" ", "")
    t = _clean_items(t, 2)
    t = _squeeze_spaces(t)
    t = t.strip(" ,;:").rstrip(" .")
    return canonical_number(t)

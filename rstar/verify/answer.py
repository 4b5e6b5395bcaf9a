"""The one answer grader: extraction, normalisation and equivalence of math answers (see docs/grading.md).

Every stage grades through this module (search rewards, SFT/PPM data building, evaluation), so numbers from different
stages and runs are comparable.

    from rstar.verify.answer import grade, is_equiv, extract_answer, answer_key

    grade("\\frac{1}{2}", "... so the answer is $\\boxed{0.5}$.")   # GradeResult(correct=True, pred_answer='0.5', ...)
    is_equiv("025", "25")                                         # True (AIME zero padding), a few microseconds
    is_equiv("[0,1)", "(0,1)")                                    # False: interval ends matter
    answer_key("\\dfrac{1}{2}") == answer_key("0.5")              # True: majority-voting key

How a pair is decided (the `method` of a `GradeResult`), cheapest rule first, each decisive when it applies (the full
list of policies, with reasons, is in docs/grading.md):

1. `fast`: both are plain decimal numbers (`25`, `025`, `27.0`): compared as decimals, no cleaning. ~3 microseconds.
2. `exact` / `key`: equal after cleaning (`normalize_answer`) or equal canonical keys (`answer_key`).
3. `numeric`: both are numbers (integers, decimals, fractions, `\\frac`, mixed numbers, scientific notation,
   percentages, thousands separators). Integers and fractions compare exactly; with a decimal on either side, within
   a relative 1e-6. `10%` equals both `10` and `0.1`. An ambiguous comma (`1,22`, `2,125`) is read as a decimal or
   thousands separator when the other answer is a single number.
4. `base` / `choice` / `text`: `204_5` (digits and base), multiple-choice letters (`(B)`, `\\text{(B)}`, `B`),
   plain-text answers (case-insensitive).
5. `assignment`: `x = 5` against `5`; chains `x = 2+3 = 5` keep the last value; `x \\approx 1.41` keeps 1.41.
6. `structure`: tuples and intervals (ordered, brackets must match), sets and bare lists (order-insensitive),
   unions, matrices, `\\pm`: compared element by element with these same rules.
7. `math_verify`: everything else (expressions, equations, inequalities against intervals) goes to math-verify +
   sympy in a worker process; `timeout` when it overran its limit.

Symbolic checks run in `rstar.verify._grader_pool` worker processes: they work from any thread (math-verify's own
`signal.alarm` timeout only works in the main thread) and a pathological expression (`9^{9^{9}}-9^{9^{9}}`) is killed
at its limit instead of hanging a Prefect worker. `timeout_s` is CPU seconds of the worker per symbolic check (so a
verdict does not depend on machine load), and a comparison's symbolic checks together stop after `WALL_FACTOR` x
`timeout_s` of wall time (waiting for a free or starting worker not counted). Results are memoised per (gold, pred, timeout). Nothing here raises on bad input: empty strings, an unclosed
`\\boxed{`, junk bytes and megabyte strings all give a result.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache

from rstar.verify import _grader_text as gt

__all__ = ["GradeResult", "answer_key", "extract_answer", "grade", "is_equiv", "normalize_answer"]

REL_TOL = Fraction(1, 10**6)  # between numbers when one is a decimal: float noise and 6-digit prints pass, 5.001 != 5
ABS_TOL = Fraction(1, 10**12)  # around zero: cos(pi/2) printed as 6.1e-17 is 0
_REL_TOL_DEC, _ABS_TOL_DEC = Decimal("1e-6"), Decimal("1e-12")
MAX_DIGITS = 4000  # longer numbers are compared as strings (int() of a huge digit string is quadratic)
MAX_EXPONENT = 1000  # 1e999999999 would build a billion-digit Fraction
MAX_ITEMS = 64  # longer lists are compared by key only
MAX_CACHED_CHARS = 1000  # memoise only answers (pairs) up to this length
MAX_SYMBOLIC_CHARS = 600  # longer answers are compared as strings: no real answer is this long, a runaway is
WALL_FACTOR = 4.0  # wall-clock cap of a comparison, in multiples of its CPU limit `timeout_s` (matters under load)

# ---------------------------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class GradeResult:
    """The verdict on one prediction: `correct`, the answer read from the prediction, the gold answer as compared,
    and `method`, the rule that decided (see the module docstring)."""

    correct: bool
    pred_answer: str | None
    gold_answer: str
    method: str

    def to_dict(self) -> dict[str, object]:
        return {
            "correct": self.correct,
            "pred_answer": self.pred_answer,
            "gold_answer": self.gold_answer,
            "method": self.method,
        }


def extract_answer(text: str) -> str | None:
    """The answer stated in a model output or a short answer string; None when there is nothing to grade.

    In order: the last `\\boxed{}` (nested braces; adjacent boxes joined, `\\boxed{1}, \\boxed{2}` -> "1, 2"),
    the printed output of our step format (`<output>...<end_of_output>`), GSM8K `#### X`, a short string that is
    already an answer (returned whole), "Final Answer: ...", "The answer is X", "Answer: X", else the last LaTeX
    segment or number of the text, whichever comes last. Math delimiters and a trailing period are stripped.
    """
    try:
        return gt.extract(_as_text(text))
    except RecursionError:  # pragma: no cover - defensive: nothing here recurses deeply
        return None


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer: LaTeX delimiters, `\\left`/`\\right`, spacing, `\\text{}` units,
    degrees, currency and thousands separators removed, `\\dfrac`/`\\tfrac` -> `\\frac`, "025" -> "25",
    "27.0" -> "27". For reports and display; `answer_key` is the voting key."""
    return _clean(_as_text(answer))


def answer_key(answer: str) -> str:
    """Equivalence-class key for majority voting (maj@k): equal keys imply `is_equiv` is True.

    Numbers become exact fractions (`0.5`, `\\frac{1}{2}` and `1/2` share "1/2"; `50%` keys as "50"), sets and bare
    lists are sorted, tuples keep their order, multiple-choice letters and words are canonicalised. Answers that need
    symbolic algebra to compare (`(x+1)^2` vs `x^2+2x+1`) keep distinct keys: a key is sound, not complete.
    """
    return _key(_clean(_as_text(answer)))


def is_equiv(gold: str, pred: str, *, timeout_s: float = 2.0) -> bool:
    """Whether `pred` is the same answer as `gold` (both already extracted answers, not full outputs).

    `timeout_s` is the CPU time one symbolic check may use in its worker process; an overrun grades False.
    """
    return _decide(_as_text(gold), _as_text(pred), float(timeout_s))[0]


def grade(gold: str, prediction: str, *, timeout_s: float = 2.0) -> GradeResult:
    """Grade a prediction (a full model output or a bare answer) against a gold answer.

    The gold goes through the same extraction (a reference solution's boxed answer is found), so callers may pass a
    gold answer or a whole reference solution.
    """
    gold_s, pred_s = _as_text(gold), _as_text(prediction)
    gold_answer = extract_answer(gold_s)
    if gold_answer is None:
        gold_answer = gold_s.strip()
    pred_answer = extract_answer(pred_s)
    if pred_answer is None:
        return GradeResult(False, None, gold_answer, "no_answer")
    ok, method = _decide(gold_answer, pred_answer, float(timeout_s))
    return GradeResult(ok, pred_answer, gold_answer, method)


# ---------------------------------------------------------------------------------------------------------------------
# Decision


def _as_text(x: object) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    return "" if x is None else str(x)


@dataclass(frozen=True)
class _Budget:
    """Time limits of one comparison: CPU seconds per symbolic check, and a wall-clock deadline for all of them."""

    cpu_s: float
    deadline: float


_PLAIN = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*$")


def _decide(gold: str, pred: str, timeout_s: float) -> tuple[bool, str]:
    if len(gold) < 64 and len(pred) < 64 and _PLAIN.match(gold) and _PLAIN.match(pred):
        try:
            a, b = Decimal(gold), Decimal(pred)
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            pass
        else:
            if a == b:
                return True, "fast"
            if "." not in gold and "." not in pred:
                return False, "fast"  # two integers: exact
            diff = abs(a - b)
            return diff <= _REL_TOL_DEC * max(abs(a), abs(b)) or diff <= _ABS_TOL_DEC, "fast"
    if not gold.strip() or not pred.strip():
        return False, "empty"
    if len(gold) + len(pred) > 2 * gt.MAX_ANSWER_CHARS:
        same = " ".join(gold.split()) == " ".join(pred.split())
        return same, "too_long"
    if len(gold) + len(pred) > MAX_CACHED_CHARS:
        return _decide_uncached(gold, pred, timeout_s)
    return _decide_cached(gold, pred, timeout_s)


def _decide_uncached(gold: str, pred: str, timeout_s: float) -> tuple[bool, str]:
    limit = max(0.05, timeout_s)
    return _compare(_clean(gold), _clean(pred), _Budget(limit, time.monotonic() + WALL_FACTOR * limit), 0)


# Memoised: the search grades the same terminal answers over and over. Long strings are not kept (memory).
_decide_cached = lru_cache(maxsize=1 << 16)(_decide_uncached)
_clean_cached = lru_cache(maxsize=1 << 16)(gt.clean)


def _clean(answer: str) -> str:
    return _clean_cached(answer) if len(answer) <= MAX_CACHED_CHARS else gt.clean(answer)


def _compare(g: str, p: str, budget: _Budget, depth: int) -> tuple[bool, str]:
    """Compare two cleaned answers; the first rule that applies decides."""
    if not g or not p:
        return False, "empty"
    if g == p:
        return True, "exact"
    if _key(g) == _key(p):
        return True, "key"
    gn, pn = _number(g), _number(p)
    if gn is not None and pn is not None:
        return _numbers_equal(gn, pn), "numeric"
    for a, b in ((g, pn), (p, gn)):  # "1,22" / "2,125" against a single number
        if b is not None and _AMBIGUOUS_COMMA.match(a):
            return any(_numbers_equal(r, b) for r in _comma_readings(a)), "numeric"
    gb, pb = _BASE.match(g), _BASE.match(p)
    if gb or pb:  # "204_5": the digits and the base must both match
        if not (gb and pb):
            return False, "base"
        return (gb.group(1).lstrip("0"), gb.group(2)) == (pb.group(1).lstrip("0"), pb.group(2)), "base"
    gc, pc = _choice(g), _choice(p)
    if gc is not None and pc is not None:
        return gc == pc, "choice"
    gw, pw = _words(g), _words(p)
    if gw is not None and pw is not None:
        return gw == pw, "text"

    ga, pa = _assignment(g), _assignment(p)
    if (
        not ga.equation
        and not pa.equation
        and (ga.name is not None or pa.name is not None or ga.value != g or pa.value != p)
    ):
        if ga.name is not None and pa.name is not None:
            if _name_key(ga.name) != _name_key(pa.name):
                return False, "assignment"
            if _number(ga.value) is None and _structure(ga.value) is None:
                return _symbolic(g, p, budget)  # "F_n = \\sum ...": math-verify compares whole equations better
        ok, how = _compare(ga.value, pa.value, budget, depth + 1)
        return ok, how if how != "exact" else "assignment"

    if depth < 4:
        gs, ps = _structure(g), _structure(p)
        if gs is not None and ps is not None:
            verdict = _compare_structures(gs, ps, budget, depth)
            if verdict is not None:
                return verdict, "structure"
        elif (gs is None and gn is not None and ps is not None and ps.kind in ("set", "tuple")) or (
            ps is None and pn is not None and gs is not None and gs.kind in ("set", "tuple")
        ):
            return False, "structure"  # one number against several
    return _symbolic(g, p, budget)


def _symbolic(g: str, p: str, budget: _Budget) -> tuple[bool, str]:
    from rstar.verify._grader_pool import symbolic_pool

    if len(g) > MAX_SYMBOLIC_CHARS or len(p) > MAX_SYMBOLIC_CHARS:
        return False, "too_long"

    left = budget.deadline - time.monotonic()
    if left <= 0:
        return False, "timeout"
    verdict, method = symbolic_pool().check(g, p, min(budget.cpu_s, left), wall_s=left)
    if verdict is None:
        return False, method
    return verdict, method


# ---------------------------------------------------------------------------------------------------------------------
# Numbers

_NUM_RE = re.compile(r"^([-+]?)(\d*\.?\d*)(?:[eE]([-+]?\d+)|(?:\\times|\\cdot|\*|×)10\^\{?([-+]?\d+)\}?)?(%?)$")
_FRAC_RE = re.compile(r"^([-+]?)(\d+)?\\frac\{([-+]?\d*\.?\d+)\}\{([-+]?\d*\.?\d+)\}(%?)$")
_SLASH_RE = re.compile(r"^([-+]?)(\d*\.?\d+)/(\d*\.?\d+)(%?)$")
_POW10_RE = re.compile(r"^([-+]?)10\^\{?([-+]?\d+)\}?$")
_AMBIGUOUS_COMMA = re.compile(r"^-?\d+(?:,\d+)+(?:\.\d+)?$")


@dataclass(frozen=True)
class _Num:
    value: Fraction
    percent: bool
    exact: bool = True  # written as an integer or a fraction (no decimal point, no exponent): compared exactly


def _dec(s: str) -> Fraction | None:
    if not s or s == "." or len(s) > MAX_DIGITS:
        return None
    try:
        return Fraction(Decimal(s))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None


def _number(s: str) -> _Num | None:
    """The exact value of a numeric answer, or None when it is not a plain number."""
    if len(s) > MAX_DIGITS or not s or not any(c.isdigit() for c in s):
        return None
    t = s[1:-1] if len(s) > 2 and s[0] == "(" and s[-1] == ")" and "," not in s else s  # "(-5)"
    m = _NUM_RE.match(t)
    if m:
        sign, mant, e1, e2, pct = m.groups()
        v = _dec(mant)
        if v is None:
            return None
        exp = e1 or e2
        if exp is not None:
            k = int(exp)
            if abs(k) > MAX_EXPONENT:
                return None
            v *= Fraction(10) ** k
        return _Num(-v if sign == "-" else v, bool(pct), "." not in mant and exp is None)
    m = _FRAC_RE.match(t)
    if m:
        sign, whole, a, b, pct = m.groups()
        num, den = _dec(a), _dec(b)
        if num is None or den is None or den == 0:
            return None
        v = num / den
        if whole:
            v = Fraction(int(whole)) + v  # mixed number: 918\frac{1}{2} = 918.5
        return _Num(-v if sign == "-" else v, bool(pct), "." not in a + b)
    m = _SLASH_RE.match(t)
    if m:
        sign, a, b, pct = m.groups()
        num, den = _dec(a), _dec(b)
        if num is None or den is None or den == 0:
            return None
        v = num / den
        return _Num(-v if sign == "-" else v, bool(pct), "." not in a + b)
    m = _POW10_RE.match(t)
    if m and abs(int(m.group(2))) <= MAX_EXPONENT:
        v = Fraction(10) ** int(m.group(2))
        return _Num(-v if m.group(1) == "-" else v, False)
    return None


def _close(a: Fraction, b: Fraction, exact: bool) -> bool:
    if a == b:
        return True
    if exact:
        return False
    diff = abs(a - b)
    return diff <= REL_TOL * max(abs(a), abs(b)) or diff <= ABS_TOL


def _numbers_equal(g: _Num, p: _Num) -> bool:
    """Integers and fractions compare exactly; when either side is a decimal, within REL_TOL (or ABS_TOL near 0)."""
    exact = g.exact and p.exact
    if _close(g.value, p.value, exact):
        return True
    if g.percent != p.percent:  # "10%" is both 10 and 0.1
        pct, other = (g, p) if g.percent else (p, g)
        return _close(pct.value / 100, other.value, exact)
    return False


def _comma_readings(s: str) -> list[_Num]:
    """`2,125` -> 2125 (thousands); `1,22` -> 1.22 (decimal comma); both readings where both are possible."""
    out = []
    head, *groups = s.split(",")
    if all(len(g.split(".")[0]) == 3 for g in groups):
        v = _dec(head + "".join(groups))
        if v is not None:
            out.append(_Num(v, False, "." not in s))
    if len(groups) == 1 and "." not in s:
        v = _dec(head + "." + groups[0])
        if v is not None:
            out.append(_Num(v, False, False))
    return out


def _num_key(n: _Num) -> str:
    v = n.value
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


# ---------------------------------------------------------------------------------------------------------------------
# Letters, words, assignments

_BASE = re.compile(r"^([0-9A-F]*\d[0-9A-F]*)_\{?(\d+)\}?$")
_CHOICE = re.compile(r"^\(?([A-J])\)?$")
_WORDS = re.compile(r"^[A-Za-z][A-Za-z' -]*[A-Za-z]$")


def _choice(s: str) -> str | None:
    m = _CHOICE.match(s)
    return m.group(1) if m else None


def _words(s: str) -> str | None:
    """Plain text with a real word in it (`odd`, `East`, `The midpoints form a hexagon`): compared case-insensitively.

    Short letter groups (`ab`, `AB`) may be products of variables or names of segments, so they are left to the other
    rules."""
    if _WORDS.match(s) and _LONG_WORD.search(s):
        return " ".join(s.lower().replace("-", " ").split())
    return None


_LONG_WORD = re.compile(r"[A-Za-z]{3,}")


@dataclass(frozen=True)
class _Assignment:
    name: str | None  # "x" in "x = 5"
    value: str  # "5"
    equation: bool  # a genuine equation like "2x + y = 1": left to the symbolic check


_IN = re.compile(r"\\in(?![a-zA-Z])")
_EQ_SPLIT = re.compile(r"(?<![<>!\\])=(?!=)")
_NAME_JUNK = re.compile(
    r"_\{[^{}]*\}|_[A-Za-z0-9]|\\text\{[^{}]*\}|\\(?:frac|overline|mathbf|vec|angle|hat|bar)|[()|:,{}' ]"
)
_GREEK = re.compile(
    r"\\(?:alpha|beta|gamma|delta|theta|lambda|mu|sigma|phi|omega|rho|tau|psi|xi|eta|zeta|kappa|nu|epsilon)"
)


def _is_name(s: str) -> bool:
    """A label an answer assigns to: `x`, `f(x)`, `a_{37}`, `|AB|`, `A:B`, `(p,q)`, `S_{MBCN}:S`, `\\frac{NO}{BO}`."""
    t = _NAME_JUNK.sub("", _GREEK.sub("a", s))
    return bool(t) and t.isalpha() and t.isascii()


def _is_constant(s: str) -> bool:
    t = re.sub(r"\\(?:frac|sqrt|cdot|times|div|pi|left|right)", "", s)
    return not re.search(r"[A-Za-z\\]", t)


@lru_cache(maxsize=1 << 14)
def _assignment(s: str) -> _Assignment:
    if "\\approx" in s:  # "x \approx 1.41" -> x's value is unknown, keep 1.41; "\frac{\sqrt3}{3} \approx 0.577" -> left
        left, _, right = s.partition("\\approx")
        s = right if _is_name(left.split("=")[0]) and "=" not in left else left
    m = _IN.search(s)
    if m and _is_name(s[: m.start()]) and s[m.end() :]:
        return _Assignment(s[: m.start()], s[m.end() :], False)  # "x \\in [0, 1)"
    if "=" not in s or len(gt.split_top(s)) > 1:
        return _Assignment(None, s, False)
    parts = _EQ_SPLIT.split(s)
    if len(parts) < 2 or any(not x for x in parts):
        return _Assignment(None, s, False)
    first, last = parts[0], parts[-1]
    if _is_name(first):
        return _Assignment(first, last, False)
    if len(parts) >= 3 or (_is_constant(first) and _is_constant(last)):
        return _Assignment(None, last, False)  # "2 + 3 = 5", "1 = z = x = 0": the stated value is the last
    return _Assignment(None, s, True)


def _name_key(name: str) -> str:
    return re.sub(r"_\{(\w)\}", r"_\1", name).replace(" ", "")


# ---------------------------------------------------------------------------------------------------------------------
# Structures: tuples, intervals, sets, lists, unions, matrices, +-


@dataclass(frozen=True)
class _Struct:
    kind: str  # "tuple" (ordered; also intervals), "set" (unordered), "union", "matrix"
    open: str
    close: str
    items: tuple[str, ...]


def _wrapped(s: str, o: str, c: str) -> bool:
    return s.startswith(o) and s.endswith(c) and gt.group_end(s, len(o) - 1) == len(s)


def _expand_pm(items: list[str]) -> list[str]:
    """`1 \\pm \\sqrt{5}` -> `1+\\sqrt{5}`, `1-\\sqrt{5}`; `\\pm 3` -> `3`, `-3` (one top-level \\pm per item)."""
    out: list[str] = []
    for it in items:
        halves = gt.split_top(it.replace("\\pm", "\x01"), "\x01") if it.count("\\pm") == 1 else [it]
        if len(halves) == 2 and halves[1]:
            a, b = halves
            out.extend([f"{a}+{b}", f"{a}-{b}"] if a else [b, f"-{b}"])
        else:
            out.append(it)
    return out


@lru_cache(maxsize=1 << 14)
def _structure(s: str) -> _Struct | None:
    if s.startswith("\\begin{pmatrix}") and s.endswith("\\end{pmatrix}") and s.count("\\begin") == 1:
        body = s[len("\\begin{pmatrix}") : -len("\\end{pmatrix}")]
        rows = tuple(r.strip() for r in body.split("\\\\"))
        return _Struct("matrix", "", "", rows)
    if "\\cup" in s:
        parts = [x.strip() for x in s.split("\\cup")]
        if len(parts) > 1 and all(parts):
            return _Struct("union", "", "", tuple(sorted(parts)))
    top = gt.split_top(s, ";")  # "p=5,q=2; p=7,q=2": semicolons separate groups of comma lists
    if len(top) == 1:
        top = gt.split_top(s)
    if len(top) > 1:
        return _Struct("set", "", "", tuple(_expand_pm(top)))
    if _wrapped(s, "\\{", "\\}") or (_wrapped(s, "{", "}") and "," in s):
        inner = s[2:-2] if s.startswith("\\{") else s[1:-1]
        return _Struct("set", "{", "}", tuple(_expand_pm(gt.split_top(inner))))
    if s[:1] in "([" and s[-1:] in ")]" and gt.group_end(s, 0) == len(s):
        items = gt.split_top(s[1:-1])
        if len(items) >= 2:
            return _Struct("tuple", s[0], s[-1], tuple(items))
        return None
    if "\\pm" in s:
        items = _expand_pm([s])
        if len(items) == 2:
            return _Struct("set", "", "", tuple(items))
    return None


def _compare_structures(g: _Struct, p: _Struct, budget: _Budget, depth: int) -> bool | None:
    """True/False when the shapes are comparable; None leaves the pair to the symbolic check."""
    if len(g.items) > MAX_ITEMS or len(p.items) > MAX_ITEMS:
        return None
    if g.kind == "matrix" or p.kind == "matrix":
        if g.kind != p.kind:
            return None
        grows = [gt.split_top(r, "&") for r in g.items]
        prows = [gt.split_top(r, "&") for r in p.items]
        if [len(r) for r in grows] != [len(r) for r in prows]:
            return False
        return all(
            _item_equal(a, b, budget, depth)
            for ra, rb in zip(grows, prows, strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
    if g.kind == "union" or p.kind == "union":
        if g.kind != p.kind:
            return None
        return _unordered_equal(g.items, p.items, budget, depth)
    if g.kind == "set" and p.kind == "set":
        return _unordered_equal(g.items, p.items, budget, depth)
    if len(g.items) != len(p.items):
        return False
    if g.kind == "tuple" and p.kind == "tuple":
        if (g.open, g.close) != (p.open, p.close):
            return False
        return all(_item_equal(a, b, budget, depth) for a, b in zip(g.items, p.items, strict=True))
    # a tuple against a set or a bare list: compared in the written order ((1,3) == {1,3}, (3,1) != {1,3});
    # a bracketed list against a set is a printed Python list of solutions ([-2, 1] == "1, -2")
    tup = g if g.kind == "tuple" else p
    if (tup.open, tup.close) == ("[", "]"):
        return _unordered_equal(g.items, p.items, budget, depth)
    if tup.open != "(" or tup.close != ")":
        return None
    return all(_item_equal(a, b, budget, depth) for a, b in zip(g.items, p.items, strict=True))


def _item_equal(a: str, b: str, budget: _Budget, depth: int) -> bool:
    return _compare(_clean(a), _clean(b), budget, depth + 1)[0]


def _unordered_equal(g: tuple[str, ...], p: tuple[str, ...], budget: _Budget, depth: int) -> bool:
    """Set equality: every element of each side equals some element of the other (duplicates count once)."""
    matched = [False] * len(p)
    for a in g:
        hit = False
        for i, b in enumerate(p):
            if _item_equal(a, b, budget, depth):
                matched[i] = hit = True
                break
        if not hit:
            return False
    return all(matched[i] or any(_item_equal(a, b, budget, depth) for a in g) for i, b in enumerate(p))


# ---------------------------------------------------------------------------------------------------------------------
# Keys


@lru_cache(maxsize=1 << 14)
def _key(c: str) -> str:
    """Canonical key of a cleaned answer; equal keys mean equal answers under `_compare`."""
    if len(c) > MAX_SYMBOLIC_CHARS:
        return c
    n = _number(c)
    if n is not None:
        return _num_key(n)
    if _THOUSANDS_KEY.match(c):
        n = _number(c.replace(",", ""))
        if n is not None:
            return _num_key(n)
    ch = _choice(c)
    if ch is not None:
        return ch
    w = _words(c)
    if w is not None:
        return w
    a = _assignment(c)
    if a.equation:
        return c
    if a.name is not None:
        return _name_key(a.name) + "=" + _key(_clean(a.value))
    if a.value != c:
        return _key(_clean(a.value))
    s = _structure(c)
    if s is None or len(s.items) > MAX_ITEMS:
        return c
    if s.kind == "matrix":
        return "M[" + ";".join(",".join(_key(_clean(x)) for x in gt.split_top(r, "&")) for r in s.items) + "]"
    keys = [_key(_clean(x)) for x in s.items]
    if s.kind == "tuple":
        return s.open + ",".join(keys) + s.close
    return ("U" if s.kind == "union" else "") + "{" + ",".join(sorted(keys)) + "}"


_THOUSANDS_KEY = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")

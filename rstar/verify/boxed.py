"""Find `\\boxed{...}` answers in model text, with nested braces, without regexes that choke on them.

Used by the step parser (a step that states a boxed answer is terminal), the grader (answer extraction from full
outputs) and the problem loader (answers inside reference solutions).
"""

from __future__ import annotations

BOXED_MARKERS = ("\\boxed", "\\fbox")


def _balanced(text: str, open_idx: int) -> tuple[str, int] | None:
    """Content of the brace group opening at `open_idx` and the index after it; None when it never closes."""
    depth = 0
    for j in range(open_idx, len(text)):
        c = text[j]
        if c == "\\" and j + 1 < len(text) and text[j + 1] in "{}":
            continue
        if c == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif c == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : j], j + 1
    return None


def all_boxed(text: str) -> list[str]:
    """Every well-formed `\\boxed{...}` / `\\fbox{...}` content in order; `\\boxed 5` (no braces) counts too.

    An unclosed brace ends the scan (nothing after it is well-formed). Linear in the length of the text: the next
    position of each marker is remembered rather than searched for again from every box.
    """
    found: list[str] = []
    nxt = {m: text.find(m) for m in BOXED_MARKERS}
    i = 0
    while True:
        for m in BOXED_MARKERS:
            if 0 <= nxt[m] < i:
                nxt[m] = text.find(m, i)
        hits = [(k, m) for m, k in nxt.items() if k >= 0]
        if not hits:
            return found
        k, m = min(hits)
        j = k + len(m)
        while j < len(text) and text[j] == " ":
            j += 1
        if j < len(text) and text[j] == "{":
            got = _balanced(text, j)
            if got is None:  # unclosed brace: nothing well-formed from here on
                return found
            found.append(got[0].strip())
            i = got[1]
        elif m == "\\boxed" and j > k + len(m) and j < len(text):
            # `\boxed 5`: a single token after a space
            end = j
            while end < len(text) and not text[end].isspace() and text[end] not in "$,;":
                end += 1
            if end > j:
                found.append(text[j:end])
            i = max(end, j)
        else:
            i = j


def last_boxed(text: str) -> str | None:
    """The last well-formed boxed content, or None (also for an unclosed `\\boxed{`)."""
    found = all_boxed(text)
    return found[-1] if found else None

"""rstar.verify.answer: extraction, normalisation, keys, time limits, threads, bad input (the grader table and the
external check are in test_grader_cases.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from rstar.verify import answer
from rstar.verify._grader_pool import symbolic_pool
from rstar.verify.answer import GradeResult, answer_key, extract_answer, grade, is_equiv, normalize_answer

T = TypeVar("T")

# --------------------------------------------------------------------------------------------------------------------
# Extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # short answers come back whole (delimiters stripped)
        ("42", "42"),
        ("$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("x \\in [-2, 7]", "x \\in [-2, 7]"),
        ("28 percent", "28 percent"),
        ("\\text{Evelyn}", "\\text{Evelyn}"),
        # boxed, nested braces, the last one wins, adjacent boxes join
        ("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
        ("first \\boxed{3}, on reflection the result is finally \\boxed{4}", "4"),
        ("roots: $\\boxed{-2}$ and $\\boxed{1}$", "-2, 1"),
        ("\\boxed{1} no no no no no \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5 is it", "5"),
        # anchors
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("Some work.\nThe answer is 17.", "17"),
        ("Thus the answer is: (1, 2).", "(1, 2)"),
        ("Answer: 3 hours", "3"),
        ("Final Answer: The largest $n$ is 34.", "34"),
        ("\\boxed{255} ... So Dr. Zaius has $10,455. Final Answer: The final answer is $10,455$.", "10,455"),
        # GSM8K
        ("She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7", "7"),
        ("Total is 2,125.\n#### 2,125", "2,125"),
        # our step format: the printed output, or the boxed answer the system appended
        ("print(x)\n<end_of_code>\n<output>\n29\n<end_of_output>\n", "29"),
        ("<output>\nx = 1.5\n<end_of_output>\n<answer>\nThe answer is \\boxed{1.5}\n<end_of_answer>", "1.5"),
        ("<output>\nanswer is 12\n<end_of_output>", "12"),
        # fallbacks: the last LaTeX segment or number, whichever is later
        (
            "The identity matrix is $\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}$.",
            "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
        ),
        ("the probability that Alice wins is 2/3. <|im_start|>user", "2/3"),
        ("so the total is 1,000.99€ in the end", "1,000.99"),
        ("Let $x$ be the count; we find there are 12 of them", "12"),
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "no numbers or math here at all, sorry", "\\boxed{", "\\boxed{unclosed"])
def test_extract_answer_gives_none_when_there_is_nothing(text: str) -> None:
    assert extract_answer(text) is None


def test_unclosed_boxed_does_not_hide_an_earlier_stated_answer() -> None:
    assert extract_answer("The answer is 5. Then \\boxed{oops") == "5"


# --------------------------------------------------------------------------------------------------------------------
# Normalisation and keys


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("025", "25"),
        ("27.0", "27"),
        ("-0.50", "-0.5"),
        (".5", "0.5"),
        ("2,125", "2125"),
        ("1 000", "1000"),
        ("10,\\!080", "10080"),
        ("\\$32,\\!348", "32348"),
        ("$\\dfrac{1}{2}$", "\\frac{1}{2}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("864 \\mbox{ inches}^2", "864"),
        ("\\text{(C)}", "(C)"),
        ("x \\geq 5", "x\\ge5"),
        ("12\\text{ and }13", "12, 13"),
        ("\\frac43", "\\frac{4}{3}"),
        ("\\boxed{7}.", "7"),
    ],
)
def test_normalize_answer(raw: str, canonical: str) -> None:
    assert normalize_answer(raw) == canonical


@pytest.mark.parametrize(
    "group",
    [
        ["0.5", "\\frac{1}{2}", "1/2", "\\dfrac12", ".50", "$\\frac{1}{2}$"],
        ["25", "025", "25.0", "\\boxed{25}", "25^\\circ"],
        ["2125", "2,125", "2 125"],
        ["1, 2, 3", "3, 2, 1", "\\{1, 2, 3\\}"],
        ["(C)", "C", "\\text{(C)}"],
        ["x=5", "x = 5.0"],
    ],
)
def test_equivalent_answers_share_a_key(group: list[str]) -> None:
    keys = {answer_key(a) for a in group}
    assert len(keys) == 1, keys
    for a in group:
        assert is_equiv(group[0], a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1/2", "0.5001"),
        ("(1, 2)", "(2, 1)"),
        ("(1, 2)", "\\{1, 2\\}"),
        ("[0, 1)", "(0, 1)"),
        ("x=5", "y=5"),
        ("10%", "0.1"),
    ],
)
def test_keys_are_sound_not_complete(a: str, b: str) -> None:
    """Different keys never claim equality; some equivalent pairs (10% and 0.1) keep different keys."""
    assert answer_key(a) != answer_key(b)


# --------------------------------------------------------------------------------------------------------------------
# Grading results


def test_grade_returns_a_frozen_result_naming_the_rule() -> None:
    r = grade("\\frac{1}{2}", "We get $\\boxed{0.5}$.")
    assert r == GradeResult(correct=True, pred_answer="0.5", gold_answer="\\frac{1}{2}", method="key")
    assert r.to_dict() == {"correct": True, "pred_answer": "0.5", "gold_answer": "\\frac{1}{2}", "method": "key"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.correct = False  # type: ignore[misc]


def test_grade_extracts_the_gold_from_a_reference_solution() -> None:
    r = grade("Adding, we get $3 + 4 = \\boxed{7}$.", "7")
    assert r.correct and r.gold_answer == "7"


def test_no_answer_is_wrong_with_its_own_method() -> None:
    r = grade("7", "I could not solve this.")
    assert (r.correct, r.pred_answer, r.method) == (False, None, "no_answer")


def test_plain_numbers_take_the_fast_path_in_microseconds() -> None:
    pairs = [(str(i), f"{i:04d}") for i in range(3000)]  # distinct pairs: nothing memoised
    t0 = time.perf_counter()
    assert all(is_equiv(g, p) for g, p in pairs)
    per_call = (time.perf_counter() - t0) / len(pairs)
    assert answer._decide("25", "025", 2.0) == (True, "fast")
    assert per_call < 100e-6, f"{per_call * 1e6:.1f} us per plain-number comparison"


def test_results_are_memoised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    pool = symbolic_pool()
    real = pool.check

    def counting(g: str, p: str, timeout_s: float, wall_s: float | None = None) -> tuple[bool | None, str]:
        calls.append((g, p))
        return real(g, p, timeout_s, wall_s)

    monkeypatch.setattr(pool, "check", counting)
    gold, pred = "(q+7)(q-7)", "q^2 - 49"  # needs sympy
    assert is_equiv(gold, pred)
    assert is_equiv(gold, pred)
    assert grade(gold, f"so it factors as $\\boxed{{{pred}}}$").correct
    assert calls == [("(q+7)(q-7)", "q^2-49")]


# --------------------------------------------------------------------------------------------------------------------
# Time limits and threads


def _in_thread(fn: Callable[[], T]) -> T:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # surfaced in the test thread below
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    assert not t.is_alive(), "grading hung in a worker thread"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_symbolic_grading_works_from_a_worker_thread() -> None:
    """Prefect runs tasks in threads; math-verify's own signal.alarm timeout raises there."""
    r = _in_thread(lambda: grade("x^2+2x+1", "the answer is $(x+1)^2$"))
    assert r.correct and r.method == "math_verify"
    assert _in_thread(lambda: is_equiv("\\tan^2(y)+1", "\\sec^2(y)"))
    assert not _in_thread(lambda: is_equiv("x^2+2x+1", "(x-1)^2"))


def test_many_threads_at_once_get_consistent_verdicts() -> None:
    pairs = [(f"{k}x+{k}", f"{k}(x+1)", True) for k in range(2, 5)] + [
        (f"{k}x+{k}", f"{k}(x-1)", False) for k in range(2, 5)
    ]
    out: dict[int, bool] = {}

    def work(i: int) -> None:
        g, p, _ = pairs[i]
        out[i] = is_equiv(g, p)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {i: e for i, (_, _, e) in enumerate(pairs)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        ("2", "9^{9^{9}} - 9^{9^{9}} + 2"),  # sympy evaluates a 370-million-digit integer in one C call
        ("1", "\\sin(x)^{200}+\\cos(x)^{200}"),  # simplify() grinds through a degree-200 trigonometric polynomial
    ],
)
def test_pathological_expressions_return_within_the_limit_from_a_thread(gold: str, pred: str) -> None:
    limit = 0.5
    assert is_equiv(f"{gold}(x+1)", f"{gold}x+{gold}")  # a warm worker is idle: its start-up is not timed
    t0 = time.monotonic()
    r = _in_thread(lambda: grade(gold, pred, timeout_s=limit))
    took = time.monotonic() - t0
    assert (r.correct, r.method) == (False, "timeout")
    assert took < answer.WALL_FACTOR * limit + 1.0, f"took {took:.2f}s for a {limit}s limit"
    # the killed worker is replaced: the next symbolic check still works
    assert is_equiv("\\frac{x^2-1}{x-1}", "x+1")


@pytest.mark.slow
def test_exponent_towers_do_not_hang() -> None:
    t0 = time.monotonic()
    assert not is_equiv("9^9^9^9", "1", timeout_s=0.5)
    assert not is_equiv("1e999999999", "1", timeout_s=0.5)  # no billion-digit Fraction on the numeric path
    assert time.monotonic() - t0 < 2 * (answer.WALL_FACTOR * 0.5 + 2.0)  # + a replacement worker's start-up


# --------------------------------------------------------------------------------------------------------------------
# Bad input never raises


@pytest.mark.parametrize(
    ("gold", "pred"),
    [
        ("", ""),
        ("5", ""),
        ("", "5"),
        ("5", "\\boxed{"),
        ("\\boxed{", "5"),
        ("5", "\\boxed{5"),
        ("5", "\x00\x01\ufffd\udcff junk \x7f"),
        ("5", "}}}}{{{{\\\\\\"),
        ("5", "$$$$$$"),
        ("\\frac{", "\\frac{1}{"),
        ("(", ")"),
        ("\\begin{pmatrix}", "\\end{pmatrix}"),
        ("5", b"\xff\xfe bytes".decode("utf-8", "replace")),
    ],
)
def test_bad_input_gives_a_result(gold: str, pred: str) -> None:
    r = grade(gold, pred)
    assert isinstance(r, GradeResult) and r.correct is False
    assert isinstance(is_equiv(gold, pred), bool)
    assert isinstance(normalize_answer(pred), str) and isinstance(answer_key(pred), str)


def test_non_string_input_is_graded_as_text() -> None:
    assert grade(5, 5.0).correct  # type: ignore[arg-type]
    assert grade(b"12", "12").correct  # type: ignore[arg-type]
    assert not grade(None, "1").correct  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "big",
    [
        "x" * 1_000_000,
        "1" * 1_000_000,
        "\\boxed{" * 150_000,
        "$" * 1_000_000,
        "\\(" * 500_000,
        "the answer is 5. " * 60_000,
        "{" * 500_000 + "}" * 500_000,
    ],
    ids=["letters", "digits", "boxed-openers", "dollars", "paren-openers", "repeated-answers", "braces"],
)
def test_megabyte_strings_are_graded_quickly(big: str) -> None:
    t0 = time.monotonic()
    r = grade("5", big)
    assert isinstance(r, GradeResult)
    assert isinstance(normalize_answer(big), str) and isinstance(answer_key(big), str)
    assert time.monotonic() - t0 < 5.0

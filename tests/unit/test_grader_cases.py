"""The grader table: gold/pred pairs in the answer styles of MATH, GSM8K, AIME and AMC, both verdicts.

Golds are written the way the benchmarks in ../shared/data/benchmarks write them (`\\left( 3, \\frac{\\pi}{2} \\right)`,
`10,\\!080`, `90^\\circ`, `\\text{(C)}`, GSM8K `2,125`, AIME `025`, AMC `27.0`); predictions the way models write them.
The external check at the bottom runs the 318 cases from public graders' test suites (../shared/data/grader-cases).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rstar.verify.answer import answer_key, grade, is_equiv

# (gold, pred, expected): pred is an extracted answer (what `extract_answer` returns)
TABLE: list[tuple[str, str, bool]] = [
    # integers, zero padding, floats (AIME / AMC / GSM8K)
    ("204", "204", True),
    ("025", "25", True),
    ("25", "025", True),
    ("27.0", "27", True),
    ("27", "27.00", True),
    ("113", "131", False),
    ("-50", "-50", True),
    ("-50", "50", False),
    ("2,125", "2125", True),
    ("114,200", "114200", True),
    ("5,600", "5600.0", True),
    ("70000", "70,000", True),
    ("57500", "57,500.00", True),
    ("18", "$18", True),
    ("18", "\\$18.00", True),
    ("260", "260 dollars", True),
    ("460", "460 students", True),
    ("45", "54", False),
    # decimals, fractions, mixed numbers, percentages, scientific notation
    ("1.25", "\\frac{5}{4}", True),
    ("1.25", "5/4", True),
    ("0.15", "\\frac{3}{20}", True),
    ("0.15", "0.150", True),
    ("0.15", "0.16", False),
    (".0000672", "6.72 \\times 10^{-5}", True),
    (".0000672", "6.72e-5", True),
    ("3.21", "3.2", False),
    ("\\frac{14}{3}", "\\dfrac{14}{3}", True),
    ("\\frac{14}{3}", "4\\frac{2}{3}", True),
    ("\\frac{14}{3}", "4.67", False),
    ("\\frac43", "\\frac{4}{3}", True),
    ("\\frac 59", "\\frac{5}{9}", True),
    ("\\frac65", "1.2", True),
    ("\\frac{270}7\\text{ degrees}", "\\frac{270}{7}", True),
    ("1\\frac{4}{5}", "\\frac{9}{5}", True),
    ("1\\frac{4}{5}", "1.8", True),
    ("\\dfrac{33}{100}", "0.33", True),
    ("\\dfrac{33}{100}", "33\\%", True),
    ("-\\frac{35}{9}", "\\frac{-35}{9}", True),
    ("-\\frac{35}{9}", "\\frac{35}{9}", False),
    ("\\frac{448}{15625}", "\\frac{448}{15625}", True),
    ("20\\%", "20", True),
    ("20\\%", "20 percent", True),
    ("20\\%", "0.2", True),
    ("20\\%", "25\\%", False),
    # thousands separators in LaTeX
    ("10,\\!080", "10080", True),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100", True),
    ("\\$32,\\!348", "32348", True),
    ("\\$32,\\!348", "32,348", True),
    ("10,\\!080", "10,800", False),
    # radicals, pi, complex numbers, bases
    ("3\\sqrt{13}", "3 \\sqrt{13}", True),
    ("3\\sqrt{13}", "\\sqrt{117}", True),
    ("3\\sqrt{13}", "\\sqrt{39}", False),
    ("11\\sqrt2", "11\\sqrt{2}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\frac{3\\sqrt{3}}{4}", "\\frac{3}{4}\\sqrt{3}", True),
    ("288 \\pi", "288\\pi", True),
    ("18+2\\pi", "2\\pi + 18", True),
    ("7\\pi", "21.99", False),
    ("-\\frac{\\pi}{6}", "-\\pi/6", True),
    ("6 - 5i", "6-5i", True),
    ("-2 + 7i", "7i - 2", True),
    ("1+274i", "1-274i", False),
    ("204_5", "204_5", True),
    ("204_5", "204", False),
    # expressions
    ("p - q", "-q + p", True),
    ("2k+2", "2(k+1)", True),
    ("x^3+3x-6", "x^3 + 3x - 6", True),
    ("x^3+3x-6", "x^3 + 3x + 6", False),
    ("(a+5)(b+2)", "ab + 2a + 5b + 10", True),
    ("-13x+3", "3 - 13x", True),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}", True),
    ("x^5 - x^4 + x^3 - x^2 + x - 1", "x^5-x^4+x^3-x^2+x-1", True),
    # degrees and units
    ("90^\\circ", "90", True),
    ("90^\\circ", "90^{\\circ}", True),
    ("90^\\circ", "90 degrees", True),
    ("145^\\circ", "135^\\circ", False),
    ("864 \\mbox{ inches}^2", "864", True),
    ("864 \\mbox{ inches}^2", "864 \\text{ square inches}", True),
    ("15\\text{ cm}^2", "15", True),
    # tuples, intervals, sets, lists, +-
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(\\frac{\\pi}{2}, 3)", False),
    ("(6,31,-1)", "(6, 31, -1)", True),
    ("(6,31,-1)", "(6, 31, 1)", False),
    ("\\left( \\frac{3}{2}, -13 \\right)", "(1.5, -13)", True),
    ("(3,4]", "(3, 4]", True),
    ("(3,4]", "[3, 4]", False),
    ("(3,4]", "(3, 4)", False),
    ("(2,\\infty)", "(2, \\infty)", True),
    ("(2,\\infty)", "[2, \\infty)", False),
    ("(-\\infty, -3] \\cup [2, \\infty)", "[2,\\infty) \\cup (-\\infty,-3]", True),
    ("1,-2", "-2, 1", True),
    ("1,-2", "1", False),
    ("3, 5, 7", "7, 5, 3", True),
    ("3, 5, 7", "3, 5", False),
    ("\\{1, 2\\}", "\\{2, 1\\}", True),
    ("1 \\pm \\sqrt{19}", "1 + \\sqrt{19}, 1 - \\sqrt{19}", True),
    ("3 \\pm 2 \\sqrt{2}", "3+2\\sqrt{2}", False),
    # matrices and vectors
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{bmatrix}-1&0\\\\0&-1\\end{bmatrix}", True),
    ("\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}", "\\begin{pmatrix}-1&0\\\\0&1\\end{pmatrix}", False),
    (
        "\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}",
        "\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}",
        True,
    ),
    ("\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}", "\\begin{pmatrix} -2 \\\\ -14 \\end{pmatrix}", False),
    # equations and assignments
    ("x=5", "5", True),
    ("5", "x = 5", True),
    ("x=5", "x = 6", False),
    ("5x - 7y + 11z + 4 = 0", "-5x + 7y - 11z - 4 = 0", True),
    ("5x - 7y + 11z + 4 = 0", "5x - 7y + 11z - 4 = 0", False),
    # plain text, multiple choice
    ("\\text{Evelyn}", "Evelyn", True),
    ("\\text{Evelyn}", "Briana", False),
    ("\\text{east}", "East", True),
    ("\\text{even}", "\\text{odd}", False),
    ("\\text{(C)}", "C", True),
    ("\\text{(C)}", "(C)", True),
    ("\\text{(C)}", "\\textbf{(C)}", True),
    ("\\text{(E)}", "(D)", False),
    ("B", "\\text{B}", True),
]


@pytest.mark.parametrize(("gold", "pred", "expected"), TABLE)
def test_grader_table(gold: str, pred: str, expected: bool) -> None:
    assert is_equiv(gold, pred) is expected


def test_the_table_is_big_and_balanced() -> None:
    assert len(TABLE) >= 80
    assert sum(1 for *_, e in TABLE if not e) >= 30


@pytest.mark.parametrize(("gold", "pred", "expected"), [(g, p, e) for g, p, e in TABLE if e])
def test_equal_keys_imply_equivalence_on_the_table(gold: str, pred: str, expected: bool) -> None:
    """`answer_key` is sound: whenever two answers share a key, the grader says they are equivalent."""
    if answer_key(gold) == answer_key(pred):
        assert is_equiv(gold, pred)
        assert is_equiv(pred, gold)


def test_keys_never_merge_different_answers() -> None:
    for gold, pred, expected in TABLE:
        if not expected:
            assert answer_key(gold) != answer_key(pred), (gold, pred)


# Full outputs: what the policy and common chat models actually write.
FULL_OUTPUTS: list[tuple[str, str, bool]] = [
    (
        "29",
        "<code>\n# Step 1\ntotal = 3 * 12\n<end_of_step>\n# Now print the final answer\nprint(total - 7)\n<end_of_code>\n"
        "<output>\n29\n<end_of_output>\n<answer>\nThe answer is \\boxed{29}\n<end_of_answer>",
        True,
    ),
    ("29", "<output>\n29\n<end_of_output>", True),
    ("2,125", "Janet sells 2125 eggs.\n#### 2,125", True),
    ("1234", "So she pays 1,234 dollars in total.\n#### 1,234", True),
    ("18", "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmers' market.\n#### 18", True),
    ("\\frac{3}{56}", "Hence $p(8) = \\boxed{\\frac{3}{56}}$.", True),
    ("\\frac{3}{56}", "Hence $p(8) = \\boxed{\\frac{3}{65}}$.", False),
    ("-2, 1", "the integer roots are $\\boxed{-2} \\quad \\text{and} \\quad \\boxed{1}$.", True),
    ("12", "Final Answer: The final answer is $12$. I hope it is correct.", True),
    ("7.78", "So Anna pays approximately $7.78 for her fudge.", True),
    ("34", "Final Answer: The largest $n$ is 34.", True),
    ("B", "The correct option is \\boxed{\\text{(B)}}.", True),
    ("B", "The correct option is \\boxed{\\text{(C)}}.", False),
    ("10", "We get \\boxed{10}, wait, no: the answer is 12.", False),
]


@pytest.mark.parametrize(("gold", "output", "expected"), FULL_OUTPUTS)
def test_grading_full_outputs(gold: str, output: str, expected: bool) -> None:
    assert grade(gold, output).correct is expected


# What the policy's final code prints (Python / sympy output) against MATH-style golds.
PRINTED: list[tuple[str, str, bool]] = [
    ("4", "4.0", True),
    ("10", "10.000000000000002", True),  # float noise
    ("0", "6.123233995736766e-17", True),
    ("1000000", "1000001", False),  # integers compare exactly, no tolerance
    ("\\frac{1}{3}", "0.3333333333333333", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{1}{3}", "1/3", True),
    ("\\frac{\\sqrt{2}}{2}", "sqrt(2)/2", True),
    ("\\frac{3\\sqrt{3}}{2}", "3*sqrt(3)/2", True),
    ("\\frac{\\pi}{4}", "pi/4", True),
    ("\\frac{\\pi}{4}", "pi/3", False),
    ("\\sqrt[3]{2}", "2**(1/3)", True),
    ("x^2+2x+1", "x**2 + 2*x + 1", True),
    ("6 - 5i", "6 - 5*I", True),
    ("(2,\\infty)", "(2, oo)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, pi/2)", True),
    ("1,-2", "[-2, 1]", True),  # a printed Python list of solutions
    ("1,-2", "[-2, 2]", False),
    ("\\{1, 2\\}", "{1, 2}", True),
]


@pytest.mark.parametrize(("gold", "printed", "expected"), PRINTED)
def test_grading_what_the_policy_code_prints(gold: str, printed: str, expected: bool) -> None:
    assert grade(gold, f"print(ans)\n<end_of_code>\n<output>\n{printed}\n<end_of_output>\n").correct is expected


def test_external_cases_agree_at_least_95_percent(shared_data: Path) -> None:
    """318 gold/pred verdicts asserted by Math-Verify, hendrycks/math and NeMo-Skills test suites.

    The best public grader agrees with 299 (94%); we need 303 (95%). docs/grading.md lists the disagreements.
    """
    cases = [json.loads(line) for line in (shared_data / "grader-cases" / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 318
    with ThreadPoolExecutor(max_workers=2) as ex:  # graded from worker threads, as Prefect does
        results = list(ex.map(lambda c: grade(c["gold"], c["pred"]), cases))
    wrong = [
        (c["gold"][-60:], c["pred"][-60:], c["expect"], r.method)
        for c, r in zip(cases, results, strict=True)
        if r.correct != c["expect"]
    ]
    agree = len(cases) - len(wrong)
    assert agree / len(cases) >= 0.95, f"{agree}/{len(cases)} agree; disagreements: {wrong}"

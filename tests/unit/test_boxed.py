"""rstar.verify.boxed: `\\boxed{}` extraction with nested braces."""

from __future__ import annotations

import time

import pytest

from rstar.verify.boxed import all_boxed, last_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{5}", "5"),
        ("so $x = \\boxed{\\frac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
        (
            "\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        ),
        ("\\boxed{ 12 }", "12"),
        ("\\boxed {7}", "7"),
        ("\\fbox{8}", "8"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
    ],
)
def test_last_boxed(text: str, expected: str) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text", ["", "no box here", "\\boxed{", "\\boxed{\\frac{1}{2}", "\\boxedx", "\\boxed"])
def test_last_boxed_is_none_without_a_closed_box(text: str) -> None:
    assert last_boxed(text) is None


def test_all_boxed_in_order_and_an_unclosed_box_ends_the_scan() -> None:
    assert all_boxed("\\boxed{1}, \\fbox{2} and \\boxed{3}") == ["1", "2", "3"]
    assert all_boxed("\\boxed{1} \\boxed{2 \\boxed{3}") == ["1"]


def test_long_inputs_are_linear() -> None:
    t0 = time.monotonic()
    assert last_boxed("\\boxed{" * 100_000) is None
    assert last_boxed("\\boxed{1}" * 50_000) == "1"
    assert time.monotonic() - t0 < 3.0

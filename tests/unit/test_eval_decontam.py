"""Decontamination: n-gram overlap between training problems and benchmarks, reported and excluded by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from rstar.eval.decontam import decontaminate, decontaminate_against, find_contamination, normalize_text
from rstar.types import Problem

LONG = (
    "A rectangular garden is 12 meters long and 5 meters wide. A path of uniform width is built around the garden, "
    "and the total area of the garden and the path is 126 square meters. How wide is the path?"
)
BENCH = {
    "bench": [
        Problem("b1", LONG, "2"),
        Problem("b2", "What is $\\frac{1}{2}$ of the sum of the first ten positive integers?", "27.5"),
        Problem("b3", "Compute $2+3$.", "5"),
    ]
}


def test_normalisation_ignores_case_markup_and_punctuation() -> None:
    assert normalize_text("What is $\\frac{1}{2}$ of  X?") == normalize_text("what is \\frac 1 2 of x")
    assert normalize_text("\\left( 3, \\pi \\right)") == "3 pi"


def test_overlaps_are_found_reported_and_excluded() -> None:
    train = [
        Problem("t-copy", LONG.upper().replace(".", " ;")),  # reformatted copy: every 13-gram shared
        Problem("t-embed", "Background first. " + LONG[:140] + " Then something else entirely different."),
        Problem("t-short", "Warm-up: what is \\frac{1}{2} of the sum of the first ten positive integers? Go."),
        Problem("t-clean", "A square garden is 7 meters on a side. What is its perimeter in meters?"),
        Problem("t-tiny", "Compute $2+3$ and then multiply the result by 4."),  # contains a 3-word question: too short
        Problem("t-exact-tiny", "compute 2 + 3"),  # identical to a very short question: flagged
    ]
    kept, report = decontaminate(train, BENCH)
    flagged = {o.train_id: o for o in report.overlaps}
    assert set(flagged) == {"t-copy", "t-embed", "t-short", "t-exact-tiny"}
    assert [p.id for p in kept] == ["t-clean", "t-tiny"]
    assert (
        flagged["t-copy"].benchmark_id == "b1"
        and flagged["t-copy"].shared_ngrams == len(normalize_text(LONG).split()) - 12
    )
    assert flagged["t-short"].benchmark_id == "b2"
    assert report.excluded and report.per_benchmark() == {"bench": 4}
    d = report.to_dict()
    assert d["contaminated"] == 4 and d["benchmark_sizes"] == {"bench": 3} and d["train_size"] == 6
    assert "4 of 6 training problems overlap bench (4)" in report.summary()


def test_exclusion_can_be_turned_off_and_thresholds_tuned() -> None:
    train = [Problem("t-embed", "Background first. " + LONG[:140] + " Then something else.")]
    kept, report = decontaminate(train, BENCH, exclude=False)
    assert kept == train and len(report.overlaps) == 1 and not report.excluded
    shared = report.overlaps[0].shared_ngrams
    assert not find_contamination(train, BENCH, min_overlap=shared + 1).overlaps
    assert find_contamination(train, BENCH, n=8).overlaps[0].shared_ngrams > shared  # shorter grams, more of them
    assert "kept (exclusion off)" in report.summary()
    with pytest.raises(ValueError):
        find_contamination(train, BENCH, min_overlap=0)


def test_no_overlap() -> None:
    kept, report = decontaminate([Problem("t", "Something unrelated about trains leaving stations at noon.")], BENCH)
    assert len(kept) == 1 and not report.overlaps and "no overlap" in report.summary()


def test_against_the_real_benchmarks(shared_data: Path) -> None:
    from rstar.eval.benchmarks import load_benchmark

    gsm = load_benchmark("gsm8k", data_dir=shared_data / "benchmarks")[0]
    train = [Problem("leak", "Solve this: " + gsm[10].question), Problem("fine", "How many legs do 3 spiders have?")]
    kept, report = decontaminate_against(train, ["gsm8k", "amc23"], data_dir=shared_data / "benchmarks")
    assert [p.id for p in kept] == ["fine"]
    assert (report.overlaps[0].benchmark, report.overlaps[0].benchmark_id) == ("gsm8k", gsm[10].id)

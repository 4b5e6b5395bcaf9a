"""Benchmark loaders: the four built-ins from the shared test copies, hub-format rows, field mappings, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rstar.eval import benchmarks as bm
from rstar.eval.benchmarks import (
    BenchmarkLoadError,
    UnknownBenchmarkError,
    canonical_number,
    get_spec,
    gsm8k_answer,
    load_benchmark,
    load_benchmarks,
)


def test_builtin_benchmarks_from_the_shared_copies(shared_data: Path) -> None:
    d = shared_data / "benchmarks"
    sizes = {name: len(load_benchmark(name, data_dir=d)[0]) for name in ("math500", "gsm8k", "aime2024", "amc23")}
    assert sizes == {"math500": 500, "gsm8k": 1319, "aime2024": 30, "amc23": 40}


def test_math500_has_levels_and_subjects(shared_data: Path) -> None:
    problems, report = load_benchmark("math500", data_dir=shared_data / "benchmarks")
    assert report.kept == 500 and not report.errors
    assert {p.level for p in problems} == {"1", "2", "3", "4", "5"}
    assert "Precalculus" in {p.subject for p in problems}
    first = problems[0]
    assert first.source == "math500" and first.id == "test/precalculus/807.json"
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_gsm8k_thousands_separators_are_removed(shared_data: Path) -> None:
    raw = json.loads((shared_data / "benchmarks" / "GSM8K_test.json").read_text())
    with_commas = {str(r["index"]): r["answer"] for r in raw if "," in r["answer"]}
    assert len(with_commas) == 14
    problems, _ = load_benchmark("GSM8K", data_dir=shared_data)  # the parent folder works too; names are case-blind
    by_id = {p.id: p.answer for p in problems}
    for pid, ans in with_commas.items():
        assert by_id[pid] == ans.replace(",", "")


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("... so $1,234 in total.\n#### 1,234", "1234"),
        ("#### -5", "-5"),
        ("2,125", "2125"),
        ("18", "18"),
    ],
)
def test_gsm8k_answer(raw: str, want: str) -> None:
    assert gsm8k_answer(raw) == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("025", "25"),
        ("27.0", "27"),
        ("1.50", "1.5"),
        ("-3.000", "-3"),
        ("1,000", "1000"),
        ("1,2", "1,2"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("0", "0"),
    ],
)
def test_canonical_number(raw: str, want: str) -> None:
    assert canonical_number(raw) == want


def test_hub_format_copies_normalise_answers(tmp_path: Path) -> None:
    """Files laid out like the hub datasets: GSM8K solutions, AMC float answers (Parquet), zero-padded AIME."""
    (tmp_path / "gsm8k").mkdir()
    rows = [{"question": "q1", "answer": "work\n#### 1,234"}, {"question": "q2", "answer": "#### 7"}]
    (tmp_path / "gsm8k" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pl.DataFrame({"id": [0, 1], "question": ["a", "b"], "answer": [27.0, 2.5], "url": ["u", "v"]}).write_parquet(
        tmp_path / "amc23.parquet"
    )
    aime = [{"id": 60, "problem": "p", "solution": "long", "answer": "025", "year": 2024}]
    (tmp_path / "aime_2024.json").write_text(json.dumps(aime))
    assert [p.answer for p in load_benchmark("gsm8k", data_dir=tmp_path)[0]] == ["1234", "7"]
    assert [p.answer for p in load_benchmark("amc23", data_dir=tmp_path)[0]] == ["27", "2.5"]
    [aime_p], _ = load_benchmark("aime", data_dir=tmp_path)
    assert (aime_p.id, aime_p.question, aime_p.answer, aime_p.source) == ("60", "p", "25", "aime2024")


def test_hub_ids_are_used_without_a_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_rows(source: Any, *, split: str = "train", subset: str | None = None) -> Iterator[Any]:
        calls.append((source, split, subset))
        yield 1, {"question": "Q?", "answer": "He has 3.\n#### 3"}, None

    monkeypatch.delenv(bm.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(bm, "iter_problem_rows", fake_rows)
    [p], _ = load_benchmark("gsm8k")
    assert calls == [("openai/gsm8k", "test", "main")]
    assert p.answer == "3"
    load_benchmark("math500")
    assert calls[-1] == ("HuggingFaceH4/MATH-500", "test", None)


def test_hub_unreachable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from rstar.data.problems import ProblemFileError

    def offline(*a: Any, **k: Any) -> Iterator[Any]:
        raise ProblemFileError("'openai/gsm8k' is neither a local file nor a loadable Hugging Face dataset")
        yield  # pragma: no cover

    monkeypatch.delenv(bm.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(bm, "iter_problem_rows", offline)
    with pytest.raises(BenchmarkLoadError, match=r"benchmark gsm8k: .*Hugging Face"):
        load_benchmark("gsm8k")


def test_unknown_benchmark_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBenchmarkError, match="aime2024, amc23, gsm8k, math500"):
        get_spec("math5000")


def test_rows_without_answers_are_reported_and_skipped(tmp_path: Path) -> None:
    f = tmp_path / "mine.jsonl"
    f.write_text('{"question": "a?", "answer": "1"}\n{"question": "b?"}\n{"question": "c?", "answer": ""}\nnot json\n')
    problems, report = load_benchmark(f"mine={f}")
    assert [p.question for p in problems] == ["a?"]
    assert len(report.errors) == 3 and "row 2: no answer" in report.errors[0]


def test_custom_field_mapping_and_builtin_overrides(tmp_path: Path) -> None:
    f = tmp_path / "set.json"
    f.write_text(json.dumps([{"uid": "x1", "prompt": "What?", "final": "4"}]))
    [p], _ = load_benchmark(f"custom={f}?question=prompt&answer=final&id=uid")
    assert (p.id, p.question, p.answer, p.source) == ("x1", "What?", "4", "custom")
    # A built-in name with a path keeps that benchmark's normalisation.
    g = tmp_path / "g.jsonl"
    g.write_text(json.dumps({"question": "q", "answer": "#### 2,000"}) + "\n")
    [q], _ = load_benchmark(f"gsm8k={g}")
    assert (q.answer, q.source) == ("2000", "gsm8k")
    with pytest.raises(UnknownBenchmarkError, match="unknown option"):
        get_spec(f"x={f}?colour=red")


def test_missing_local_copy_names_the_files_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkLoadError, match=r"aime2024_test\.jsonl"):
        load_benchmark("aime2024", data_dir=tmp_path)
    with pytest.raises(BenchmarkLoadError, match="data directory not found"):
        load_benchmark("aime2024", data_dir=tmp_path / "nope")
    with pytest.raises(BenchmarkLoadError, match="file not found"):
        load_benchmark("aime2024", path=tmp_path / "nope.json")


def test_load_benchmarks_keeps_going_past_bad_ones(shared_data: Path) -> None:
    loaded, reports, errors = load_benchmarks(
        ["amc23", "nonsense", "gsm8k=/nowhere/x.jsonl"], data_dir=shared_data / "benchmarks", limit=5
    )
    assert list(loaded) == ["amc23"] and len(loaded["amc23"]) == 5
    assert reports["amc23"].kept == 40
    assert set(errors) == {"nonsense", "gsm8k"}
    assert "known benchmarks are" in errors["nonsense"] and "file not found" in errors["gsm8k"]

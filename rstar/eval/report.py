"""Evaluation reports: per-problem Parquet, summary JSON, Markdown tables, the accuracy-vs-budget PNG.

`write_reports(out_dir, results, meta=...)` writes, into one directory (which the Prefect/MLflow side logs as is):

| file | what |
|---|---|
| `results.parquet` | one row per (benchmark, mode, budget, problem), schema `RESULTS_SCHEMA` |
| `summary.json` | run metadata, one summary per cell, MATH500 by level and subject, load and run errors |
| `table.md` | the benchmark x mode accuracy table, the detailed per-cell table, and the breakdowns |
| `scaling.png` | accuracy against budget (left) and against tokens generated per problem (right), per benchmark x mode |

The runner also appends every batch to `results.jsonl` as it goes, so a run that dies keeps what it finished.
matplotlib is imported inside `plot_scaling` and draws through its object-oriented `Figure` API (Agg, no display).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from rstar.eval.metrics import CellSummary, ProblemResult, breakdown, mode_label, summarize

RESULTS_SCHEMA: dict[str, pl.DataType] = {
    "benchmark": pl.Utf8(),
    "mode": pl.Utf8(),  # greedy | maj | bon | wmaj | beam | mcts | mcts-topk | mcts-wmaj | mcts-plain
    "budget": pl.Int32(),  # samples (maj, bon), beam width (beam), rollouts (mcts); 1 for greedy
    "problem_id": pl.Utf8(),
    "problem": pl.Utf8(),  # the question text
    "gold": pl.Utf8(),
    "prediction": pl.Utf8(),  # null: no answer
    "correct": pl.Boolean(),
    "n_samples": pl.Int32(),  # finished trajectories behind pass@k
    "n_correct": pl.Int32(),
    "tokens": pl.Int64(),  # tokens generated for this problem, pruned candidates included
    "wall_time_s": pl.Float64(),  # the problem's share of its batch's wall time
    "level": pl.Utf8(),
    "subject": pl.Utf8(),
    "score": pl.Float64(),  # PPM score of the picked trajectory (bon, beam, mcts)
    "votes": pl.Int32(),  # support of the picked answer (maj, wmaj, mcts-topk, mcts-wmaj)
    "answers": pl.List(pl.Utf8()),  # every sample's answer, in sample order (null: none)
    "scores": pl.List(pl.Float64()),  # their PPM scores where scored
    "sample_correct": pl.List(pl.Boolean()),  # each sample's grade (empty in results written before it existed)
    "grade_method": pl.Utf8(),  # how the grader decided (exact, numeric, symbolic, ...)
    "error": pl.Utf8(),  # why the problem could not be evaluated (counts as wrong)
}

TABLE_COLUMNS = ("benchmark", "mode", "n", "acc %", "pass@1 %", "pass@k %", "covered %", "PPM rank %", "tokens/problem",
                 "s/problem", "errors")  # fmt: skip


def results_frame(results: Iterable[ProblemResult]) -> pl.DataFrame:
    """Per-problem results as a frame with exactly `RESULTS_SCHEMA`."""
    rows = [r.to_row() for r in results]
    for row in rows:
        row["scores"] = [None if s is None or (isinstance(s, float) and math.isnan(s)) else s for s in row["scores"]]
    return pl.DataFrame([{k: row.get(k) for k in RESULTS_SCHEMA} for row in rows], schema=RESULTS_SCHEMA)


def read_results(path: str | Path) -> pl.DataFrame:
    """Read a `results.parquet` and check its schema."""
    from rstar.data.schema import validate

    return validate(pl.read_parquet(path), RESULTS_SCHEMA, name=str(path))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_table(summaries: Sequence[CellSummary]) -> str:
    """The detailed per-cell table (Markdown)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for s in summaries:
        cells = [
            s.benchmark,
            s.label,
            str(s.problems),
            _pct(s.accuracy),
            _pct(s.pass_at_1),
            _pct(s.pass_at_k),
            _pct(s.covered / s.problems),
            "-" if s.ranking_accuracy is None else _pct(s.ranking_accuracy),
            f"{s.mean_tokens:.0f}",
            f"{s.mean_wall_time_s:.2f}",
            str(s.errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot_table(summaries: Sequence[CellSummary]) -> str:
    """Benchmark x mode accuracy (%) table (Markdown); a missing cell shows as '-'."""
    labels: list[str] = []
    benches: list[str] = []
    acc: dict[tuple[str, str], float] = {}
    for s in summaries:
        if s.label not in labels:
            labels.append(s.label)
        if s.benchmark not in benches:
            benches.append(s.benchmark)
        acc[(s.benchmark, s.label)] = s.accuracy
    lines = ["| benchmark | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for b in benches:
        cells = [_pct(acc[(b, lab)]) if (b, lab) in acc else "-" for lab in labels]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_breakdown(rows: Sequence[Mapping[str, Any]], by: str) -> str:
    """A breakdown (by level or subject) as Markdown: per benchmark, one row per group, one column per mode label."""
    if not rows:
        return ""
    out: list[str] = []
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        sub = [r for r in rows if r["benchmark"] == bench]
        labels = list(dict.fromkeys(r["label"] for r in sub))
        groups = list(dict.fromkeys(r[by] for r in sub))
        cell = {(r[by], r["label"]): r for r in sub}
        lines = [f"### {bench} by {by}", "", f"| {by} | n | " + " | ".join(labels) + " |"]
        lines.append("|---|---|" + "---|" * len(labels))
        for g in groups:
            n = max(int(cell[(g, lab)]["problems"]) for lab in labels if (g, lab) in cell)
            vals = [_pct(cell[(g, lab)]["accuracy"]) if (g, lab) in cell else "-" for lab in labels]
            lines.append(f"| {g} | {n} | " + " | ".join(vals) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def plot_scaling(summaries: Sequence[CellSummary], path: str | Path, *, title: str = "") -> Path:
    """Accuracy vs budget and accuracy vs tokens per problem, one line per (benchmark, mode); writes a PNG."""
    # The object-oriented API without pyplot: no global figure state (safe in worker threads), renders with Agg,
    # and imports in half the time.
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    fig = Figure(figsize=(11, 4.2))
    ax_b, ax_t = fig.subplots(1, 2)
    series: dict[tuple[str, str], list[CellSummary]] = {}
    for s in summaries:
        series.setdefault((s.benchmark, s.mode), []).append(s)
    modes = list(dict.fromkeys(m for _, m in series))
    benches = list(dict.fromkeys(b for b, _ in series))
    colors = [f"C{i % 10}" for i in range(len(modes))]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    for (bench, mode), points in series.items():
        points = sorted(points, key=lambda s: s.budget)
        bi = benches.index(bench)
        style = {
            "color": colors[modes.index(mode)],
            "linestyle": styles[bi % len(styles)],
            "marker": markers[bi % len(markers)],
            "label": f"{bench} {mode}" if len(benches) > 1 else mode,
        }
        acc = [100 * s.accuracy for s in points]
        ax_b.plot([s.budget for s in points], acc, **style)
        ax_t.plot([max(s.mean_tokens, 1.0) for s in points], acc, **style)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for ax, xlabel in ((ax_b, "budget (samples / beam width / rollouts)"), (ax_t, "tokens generated per problem")):
        ax.set_xscale("log", base=2 if ax is ax_b else 10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
    ax_b.xaxis.set_major_formatter(plain)
    if series:
        ax_b.legend(fontsize=8, loc="best")
    fig.suptitle(title or "test-time scaling: accuracy vs compute")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path


def write_reports(
    out_dir: str | Path,
    results: Sequence[ProblemResult],
    *,
    meta: Mapping[str, Any] | None = None,
    plot: bool = True,
) -> dict[str, Path]:
    """Write results.parquet, summary.json, table.md and (when `plot`) scaling.png into `out_dir`; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(results)
    by_level = breakdown(results, "level")
    by_subject = breakdown(results, "subject")
    files: dict[str, Path] = {}

    files["results"] = out / "results.parquet"
    _atomic_parquet(results_frame(results), files["results"])

    summary = {
        **dict(meta or {}),
        "cells": [s.to_dict() for s in summaries],
        "by_level": by_level,
        "by_subject": by_subject,
    }
    files["summary"] = out / "summary.json"
    _atomic_text(files["summary"], json.dumps(summary, indent=2, default=str) + "\n")

    parts = [
        "# Evaluation",
        "",
        "## Accuracy (%)",
        "",
        pivot_table(summaries),
        "",
        "## Cells",
        "",
        format_table(summaries),
    ]
    if by_level:
        parts += ["", "## By level", "", format_breakdown(by_level, "level")]
    if by_subject:
        parts += ["", "## By subject", "", format_breakdown(by_subject, "subject")]
    errors = list((meta or {}).get("errors", []))
    if errors:
        parts += ["", "## Errors", "", *[f"- {e}" for e in errors]]
    files["table"] = out / "table.md"
    _atomic_text(files["table"], "\n".join(parts) + "\n")

    if plot:
        files["plot"] = plot_scaling(summaries, out / "scaling.png", title=str((meta or {}).get("policy", "")))
    return files


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _atomic_parquet(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    df.write_parquet(tmp)
    tmp.replace(path)


__all__ = [
    "RESULTS_SCHEMA",
    "format_breakdown",
    "format_table",
    "mode_label",
    "pivot_table",
    "plot_scaling",
    "read_results",
    "results_frame",
    "write_reports",
]

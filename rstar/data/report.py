"""The per-round data-quality report: what the search produced and what the training data looks like.

    summary = build_data(["runs/r1/trees"], "runs/r1/data", k=2)   # the whole data stage (rstar build-data)
    report = quality_report(agg, sft, pairs)                       # a JSON-serialisable dict
    report = write_report("runs/r1/data/report", agg, sft, pairs, extra={"sft": sft_stats.to_dict()})

`write_report` writes `report.json`, `report.md` (the same numbers as markdown tables) and PNG plots (matplotlib, Agg
backend): the Q distribution, pairs per depth, solve rate by difficulty and by source. What it covers: problems,
coverage (problems with a correct answer) and mean solve rate overall, by difficulty and by source; Q statistics
overall, per depth and at correct / wrong answer terminals; the code-error rate of terminals and of executed steps;
average steps per trajectory (all, correct, SFT); SFT rows; pairs by kind and depth with their Q margins; and the
re-run list. Empty inputs give a report of zeros and "no data" plots, never an exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from rstar.data.pairs import PairConfig
from rstar.data.qvalues import Aggregate, AggregateConfig

Q_BINS = 20


def _num(x: Any, nd: int = 4) -> Any:
    """JSON-safe rounding: None for NaN / missing."""
    if x is None:
        return None
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, nd)
    return x


def _rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _num(v) for k, v in r.items()} for r in df.to_dicts()]


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def quality_report(
    agg: Aggregate, sft: pl.DataFrame, pairs: pl.DataFrame, *, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Every number of the data-quality report, as plain JSON-serialisable values."""
    p = agg.problems
    solved = p.filter(pl.col("correct") > 0)
    totals = {
        "problems": p.height,
        "trees": int(p["trees"].sum() or 0),
        "nodes": int(p["nodes"].sum() or 0),
        "terminals": int(p["terminals"].sum() or 0),
        "answers": int(p["answers"].sum() or 0),
        "correct": int(p["correct"].sum() or 0),
        "wrong": int(p["wrong"].sum() or 0),
        "code_errors": int(p["code_errors"].sum() or 0),
        "other_terminals": int(p["other_terminals"].sum() or 0),
        "solved_problems": solved.height,
        "coverage": _ratio(solved.height, p.height),
        "mean_solve_rate": _num(p["solve_rate"].mean()) if p.height else None,
    }
    by_difficulty = (
        p.group_by("difficulty")
        .agg(pl.len().alias("problems"), pl.col("solve_rate").mean().alias("mean_solve_rate"))
        .with_columns((pl.col("problems") / max(p.height, 1)).alias("share"))
        .sort("difficulty")
    )
    by_source = (
        p.with_columns(pl.col("source").fill_null("(none)"))
        .group_by("source")
        .agg(
            pl.len().alias("problems"),
            (pl.col("correct") > 0).sum().alias("solved"),
            pl.col("solve_rate").mean().alias("mean_solve_rate"),
        )
        .with_columns((pl.col("solved") / pl.col("problems")).alias("coverage"))
        .sort("source")
    )
    steps = agg.steps
    q = steps["q"].drop_nulls() if steps.height else pl.Series("q", [], pl.Float64)
    hist = _histogram(q.to_list())
    q_stats: dict[str, Any] = {
        "count": q.len(),
        "unvisited": steps.height - q.len(),
        "mean": _num(q.mean()) if q.len() else None,
        "std": _num(q.std()) if q.len() > 1 else None,
        "p10": _num(q.quantile(0.1, "linear")) if q.len() else None,
        "median": _num(q.median()) if q.len() else None,
        "p90": _num(q.quantile(0.9, "linear")) if q.len() else None,
        "histogram": hist,
        "mean_at_correct_terminals": _num(steps.filter(pl.col("is_correct"))["q"].mean()) if steps.height else None,
        "mean_at_wrong_terminals": _num(steps.filter(pl.col("is_wrong"))["q"].mean()) if steps.height else None,
    }
    executed = steps.filter(pl.col("exec_ok").is_not_null()) if steps.height else steps
    exec_errors = int((~executed["exec_ok"]).sum()) if executed.height else 0
    terminal_depths = steps.filter(pl.col("is_terminal").fill_null(False)) if steps.height else steps
    avg_steps = {
        "all_terminals": _num(terminal_depths["depth"].mean()) if terminal_depths.height else None,
        "correct": _num(terminal_depths.filter(pl.col("is_correct"))["depth"].mean())
        if terminal_depths.height
        else None,
        "sft": _num(sft["num_steps"].mean()) if sft.height else None,
    }
    pairs_by_depth = (
        pairs.group_by("depth")
        .agg(
            (pl.col("kind") == "step").sum().alias("step"),
            (pl.col("kind") == "final").sum().alias("final"),
            (pl.col("q_chosen") - pl.col("q_rejected")).mean().alias("mean_margin"),
        )
        .sort("depth")
        if pairs.height
        else pl.DataFrame(schema={"depth": pl.Int32, "step": pl.UInt32, "final": pl.UInt32, "mean_margin": pl.Float64})
    )
    margins = (pairs["q_chosen"] - pairs["q_rejected"]) if pairs.height else pl.Series([], dtype=pl.Float64)
    pair_stats = {
        "total": pairs.height,
        "step": int((pairs["kind"] == "step").sum()) if pairs.height else 0,
        "final": int((pairs["kind"] == "final").sum()) if pairs.height else 0,
        "problems": pairs["problem_id"].n_unique() if pairs.height else 0,
        "mean_margin": _num(margins.mean()) if pairs.height else None,
        "min_margin": _num(margins.min()) if pairs.height else None,
        "by_depth": _rows(pairs_by_depth),
    }
    sft_stats = {
        "rows": sft.height,
        "problems": sft["problem_id"].n_unique() if sft.height else 0,
        "mean_avg_q": _num(sft["avg_q"].mean()) if sft.height else None,
        "mean_completion_chars": _num(sft["completion"].str.len_chars().mean()) if sft.height else None,
    }
    rerun = agg.rerun
    rerun_stats = {
        "problems": rerun.height,
        "extra_rollouts": int(rerun["extra_rollouts"].sum() or 0) if rerun.height else 0,
        "by_reason": _rows(
            rerun.group_by("rerun_reason")
            .agg(pl.len().alias("problems"), pl.col("extra_rollouts").sum())
            .sort("rerun_reason")
        )
        if rerun.height
        else [],
    }
    report: dict[str, Any] = {
        "totals": totals,
        "by_difficulty": _rows(by_difficulty),
        "by_source": _rows(by_source),
        "q": q_stats,
        "code_error_rate": _ratio(totals["code_errors"], totals["terminals"]),
        "exec_error_step_rate": _ratio(exec_errors, executed.height),
        "avg_steps": avg_steps,
        "depths": _rows(agg.depths),
        "sft": sft_stats,
        "pairs": pair_stats,
        "rerun": rerun_stats,
    }
    if extra:
        report["extra"] = dict(extra)
    return report


def _histogram(values: list[float], bins: int = Q_BINS, lo: float = -1.0, hi: float = 1.0) -> dict[str, list]:
    """Counts of Q-values in `bins` equal bins over [lo, hi] (values outside are clipped into the end bins)."""
    counts = [0] * bins
    width = (hi - lo) / bins
    for v in values:
        i = int((v - lo) / width)
        counts[min(max(i, 0), bins - 1)] += 1
    edges = [round(lo + i * width, 4) for i in range(bins + 1)]
    return {"edges": edges, "counts": counts}


def _md_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def render_markdown(report: Mapping[str, Any], title: str = "Data-quality report") -> str:
    """The report as markdown: key numbers first, then one table per breakdown."""
    t = report["totals"]
    q = report["q"]
    lines = [
        f"# {title}\n",
        _md_table(
            [
                {"metric": "problems", "value": t["problems"]},
                {"metric": "solved problems (coverage)", "value": f"{t['solved_problems']} ({t['coverage']})"},
                {"metric": "mean solve rate", "value": t["mean_solve_rate"]},
                {"metric": "trees / nodes", "value": f"{t['trees']} / {t['nodes']}"},
                {
                    "metric": "terminals: correct / wrong / code error / other",
                    "value": f"{t['correct']} / {t['wrong']} / {t['code_errors']} / {t['other_terminals']}",
                },
                {"metric": "code-error rate (terminals)", "value": report["code_error_rate"]},
                {"metric": "exec-error rate (steps)", "value": report["exec_error_step_rate"]},
                {
                    "metric": "avg steps: all / correct / SFT",
                    "value": " / ".join(str(report["avg_steps"][k]) for k in ("all_terminals", "correct", "sft")),
                },
                {"metric": "SFT rows (problems)", "value": f"{report['sft']['rows']} ({report['sft']['problems']})"},
                {
                    "metric": "pairs: step / final",
                    "value": f"{report['pairs']['step']} / {report['pairs']['final']}",
                },
                {
                    "metric": "pair Q margin: mean / min",
                    "value": f"{report['pairs']['mean_margin']} / {report['pairs']['min_margin']}",
                },
                {
                    "metric": "re-run problems (extra rollouts)",
                    "value": f"{report['rerun']['problems']} ({report['rerun']['extra_rollouts']})",
                },
            ]
        ),
        "## Q-values of steps\n",
        _md_table(
            [
                {k: q[k] for k in ("count", "unvisited", "mean", "std", "p10", "median", "p90")}
                | {"at correct": q["mean_at_correct_terminals"], "at wrong": q["mean_at_wrong_terminals"]}
            ]
        ),
        "## By difficulty\n",
        _md_table(report["by_difficulty"]),
        "## By source\n",
        _md_table(report["by_source"]),
        "## By depth\n",
        _md_table(report["depths"]),
        "## Pairs by depth\n",
        _md_table(report["pairs"]["by_depth"]),
        "## Re-runs\n",
        _md_table(report["rerun"]["by_reason"]),
    ]
    if "extra" in report:
        lines += ["## Build details\n", "```json\n" + json.dumps(report["extra"], indent=2, default=str) + "\n```\n"]
    return "\n".join(lines)


def plot_report(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG plots of the report (matplotlib, Agg backend, imported here so the data modules stay light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)

    def no_data(ax: Any) -> None:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)

    hist = report["q"]["histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if sum(hist["counts"]):
        ax.bar(hist["edges"][:-1], hist["counts"], width=hist["edges"][1] - hist["edges"][0], align="edge")
    else:
        no_data(ax)
    ax.set(title="Q-values of visited steps", xlabel="Q", ylabel="steps")
    save(fig, "q_distribution.png")

    by_depth = report["pairs"]["by_depth"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if by_depth:
        d = [r["depth"] for r in by_depth]
        ax.bar(d, [r["step"] for r in by_depth], label="step")
        ax.bar(d, [r["final"] for r in by_depth], bottom=[r["step"] for r in by_depth], label="final")
        ax.legend()
    else:
        no_data(ax)
    ax.set(title="Preference pairs per depth", xlabel="depth of the judged step", ylabel="pairs")
    save(fig, "pairs_per_depth.png")

    for key, name, title in (
        ("by_difficulty", "solve_rate_by_difficulty.png", "difficulty"),
        ("by_source", "solve_rate_by_source.png", "source"),
    ):
        rows = report[key]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if rows:
            labels = [str(r[title]) for r in rows]
            ax.bar(labels, [r["mean_solve_rate"] or 0.0 for r in rows])
            for i, r in enumerate(rows):
                ax.annotate(f"n={r['problems']}", (i, r["mean_solve_rate"] or 0.0), ha="center", va="bottom")
            ax.set_ylim(0, 1.1)
            ax.tick_params(axis="x", labelrotation=30)
        else:
            no_data(ax)
        ax.set(title=f"Mean solve rate by {title}", ylabel="solve rate")
        save(fig, name)
    return paths


def write_report(
    out_dir: str | Path,
    agg: Aggregate,
    sft: pl.DataFrame,
    pairs: pl.DataFrame,
    *,
    extra: Mapping[str, Any] | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write report.json, report.md and the plots to `out_dir`; return the report dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = quality_report(agg, sft, pairs, extra=extra)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    if plots:
        plot_report(report, out)
    return report


# --------------------------------------------------------------------------------------------------------------------
# The whole data stage: tree shards -> aggregate, SFT data, pairs, report (what `rstar build-data` and the round's
# Prefect task call)

DATA_FILES = {
    "sft": "sft.parquet",
    "pairs": "pairs.parquet",
    "problems": "aggregate/problems.parquet",
    "depths": "aggregate/depths.parquet",
    "rerun": "aggregate/rerun.parquet",
    "report": "report/report.json",
    "summary": "summary.json",
}


def build_data(
    tree_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    k: int = 2,
    pair_config: PairConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    plots: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Read every tree shard under `tree_dirs`, write the round's training data and report to `out_dir`.

    Writes `sft.parquet` (SFT_SCHEMA), `pairs.parquet` (PAIRS_SCHEMA), `aggregate/{problems,depths,rerun}.parquet`,
    `report/` (report.json, report.md, PNG plots) and `summary.json`; returns the summary (counts, selection and
    filter statistics, input files, tree issues, output digests). Empty or unreadable shard files are reported in the
    summary, not fatal; raises FileNotFoundError when a directory does not exist or holds no Parquet file at all.
    """
    from tqdm import tqdm

    from rstar.data.pairs import pairs_from_trees
    from rstar.data.qvalues import aggregate
    from rstar.data.sft import sft_from_trees
    from rstar.data.trees import build_trees, load_tree_dirs

    out = Path(out_dir)
    (out / "aggregate").mkdir(parents=True, exist_ok=True)
    stages = tqdm(total=6, desc="build-data", unit="stage", file=sys.stderr, disable=not progress)

    def stage(name: str) -> None:
        stages.set_postfix_str(name)
        stages.update(1)

    data = load_tree_dirs(tree_dirs)
    if not (data.node_files or data.problem_files or data.empty_files or data.skipped_files):
        stages.close()
        raise FileNotFoundError(f"no Parquet tree files under {', '.join(map(str, tree_dirs))}")
    stage("loaded")
    trees, issues = build_trees(data.nodes)
    stage("trees")
    agg = aggregate(data.nodes, data.problems, aggregate_config)
    agg.problems.write_parquet(out / DATA_FILES["problems"])
    agg.depths.write_parquet(out / DATA_FILES["depths"])
    agg.rerun.write_parquet(out / DATA_FILES["rerun"])
    stage("aggregate")
    sft, sft_stats = sft_from_trees(trees, data.problems, k=k)
    sft.write_parquet(out / DATA_FILES["sft"])
    stage("sft")
    pairs, pair_stats = pairs_from_trees(trees, data.problems, pair_config)
    pairs.write_parquet(out / DATA_FILES["pairs"])
    stage("pairs")
    summary: dict[str, Any] = {
        "inputs": {
            "dirs": [str(d) for d in tree_dirs],
            "node_files": data.node_files,
            "problem_files": data.problem_files,
            "empty_files": data.empty_files,
            "skipped_files": data.skipped_files,
        },
        "counts": {
            "problems": agg.problems.height,
            "trees": len(trees),
            "nodes": data.nodes.height,
            "sft_rows": sft.height,
            "pairs": pairs.height,
            "rerun_problems": agg.rerun.height,
        },
        "sft": {"k": k, **sft_stats.to_dict()},
        "pairs": {"config": asdict(pair_config or PairConfig()), **pair_stats.to_dict()},
        "tree_issues": {
            "dropped_nodes": issues.dropped_nodes,
            "dropped_trees": issues.dropped_trees,
            "messages": issues.messages[:50],
        },
        "digests": {name: _file_digest(out / DATA_FILES[name]) for name in ("sft", "pairs", "problems", "rerun")},
    }
    if not data.node_files:
        summary["warning"] = "no tree nodes found (empty tree files): nothing to train on"
    report = write_report(
        out / "report", agg, sft, pairs, extra={k_: summary[k_] for k_ in ("sft", "pairs")}, plots=plots
    )
    summary["report"] = {
        "coverage": report["totals"]["coverage"],
        "mean_solve_rate": report["totals"]["mean_solve_rate"],
        "code_error_rate": report["code_error_rate"],
    }
    (out / DATA_FILES["summary"]).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    stage("report")
    stages.close()
    return summary


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

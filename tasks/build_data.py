"""Stage 3: training data from the round's aggregate: policy SFT rows, PPM preference pairs, the data-quality report.

    sft = build_sft_data(agg, round_idx=2, top_k=2)          # rounds/2/sft/<digest>/sft.parquet
    pairs = build_ppm_pairs(agg, round_idx=2)                # rounds/2/pairs/<digest>/pairs.parquet
    report = data_report(agg, sft, pairs, round_idx=2)       # rounds/2/report/<digest>/report.{md,json} + PNGs

Each task calls one `rstar.data` function (`build_sft`, `build_pairs`, `write_report`) on the merged tables of the
aggregate artifact. All three are deterministic: their cache keys are their inputs and their source.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from prefect import task

from infra.storage import ArtifactRef
from tasks.aggregate import NODES_FILE, PROBLEMS_TABLE, load_aggregate
from tasks.common import DETERMINISTIC, StageOutput, materialize, read_json, retry_on_transient

SFT_FILE = "sft.parquet"
PAIRS_FILE = "pairs.parquet"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _tables(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_parquet(folder / NODES_FILE), pl.read_parquet(folder / PROBLEMS_TABLE)


def run_sft(agg_dir: Path, out: Path, top_k: int) -> StageOutput:
    from rstar.data.sft import build_sft

    nodes, problems = _tables(agg_dir)
    df = build_sft(nodes, problems, k=top_k)
    df.write_parquet(out / SFT_FILE)
    n_problems = df["problem_id"].n_unique() if df.height and "problem_id" in df.columns else 0
    return StageOutput(rows=df.height, metrics={"sft_rows": float(df.height), "sft_problems": float(n_problems)})


def run_pairs(agg_dir: Path, out: Path) -> StageOutput:
    from rstar.data.pairs import build_pairs

    nodes, problems = _tables(agg_dir)
    df = build_pairs(nodes, problems)
    df.write_parquet(out / PAIRS_FILE)
    return StageOutput(rows=df.height, metrics={"pairs": float(df.height)})


def run_report(agg_dir: Path, sft_dir: Path, pairs_dir: Path, out: Path) -> StageOutput:
    from rstar.data.report import write_report

    report = write_report(
        out, load_aggregate(agg_dir), pl.read_parquet(sft_dir / SFT_FILE), pl.read_parquet(pairs_dir / PAIRS_FILE)
    )
    totals = report.get("totals", {}) if isinstance(report, dict) else {}
    metrics = {f"report_{k}": float(v) for k, v in totals.items() if isinstance(v, int | float) and v is not None}
    return StageOutput(rows=None, metrics=metrics)


def build_sft_data_fn(
    aggregate: ArtifactRef, round_idx: int, top_k: int = 2, parent_run_id: str | None = None
) -> ArtifactRef:
    return materialize(
        stage="sft",
        round_idx=round_idx,
        parents={"aggregate": aggregate},
        config={"top_k": top_k},
        build=lambda out, inputs: run_sft(inputs["aggregate"], out, top_k),
        parent_run_id=parent_run_id,
        run_name=f"build-sft-r{round_idx}",
    )


def build_ppm_pairs_fn(aggregate: ArtifactRef, round_idx: int, parent_run_id: str | None = None) -> ArtifactRef:
    return materialize(
        stage="pairs",
        round_idx=round_idx,
        parents={"aggregate": aggregate},
        config={},
        build=lambda out, inputs: run_pairs(inputs["aggregate"], out),
        parent_run_id=parent_run_id,
        run_name=f"build-pairs-r{round_idx}",
    )


def data_report_fn(
    aggregate: ArtifactRef, sft: ArtifactRef, pairs: ArtifactRef, round_idx: int, parent_run_id: str | None = None
) -> ArtifactRef:
    return materialize(
        stage="report",
        round_idx=round_idx,
        parents={"aggregate": aggregate, "sft": sft, "pairs": pairs},
        config={},
        build=lambda out, inputs: run_report(inputs["aggregate"], inputs["sft"], inputs["pairs"], out),
        parent_run_id=parent_run_id,
        run_name=f"data-report-r{round_idx}",
    )


@task(
    name="build-sft",
    task_run_name="build-sft-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_transient,
)
def build_sft_data(
    aggregate: ArtifactRef, round_idx: int, top_k: int = 2, parent_run_id: str | None = None
) -> ArtifactRef:
    """Top-k correct trajectories per solved problem, in the policy's step format (`sft.parquet`)."""
    return build_sft_data_fn(aggregate, round_idx, top_k, parent_run_id)


@task(
    name="build-pairs",
    task_run_name="build-pairs-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_transient,
)
def build_ppm_pairs(aggregate: ArtifactRef, round_idx: int, parent_run_id: str | None = None) -> ArtifactRef:
    """Step-level and final-step preference pairs for the PPM (`pairs.parquet`)."""
    return build_ppm_pairs_fn(aggregate, round_idx, parent_run_id)


@task(
    name="data-report",
    task_run_name="data-report-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_transient,
)
def data_report(
    aggregate: ArtifactRef, sft: ArtifactRef, pairs: ArtifactRef, round_idx: int, parent_run_id: str | None = None
) -> ArtifactRef:
    """The round's data-quality report: report.md, report.json and PNG plots."""
    return data_report_fn(aggregate, sft, pairs, round_idx, parent_run_id)


def report_markdown(folder: Path) -> str:
    """The markdown of a report artifact folder (for the round's Prefect artifact)."""
    md = folder / REPORT_MD
    if md.exists():
        return md.read_text(encoding="utf-8")
    data = read_json(folder / REPORT_JSON) if (folder / REPORT_JSON).exists() else {}
    return "```json\n" + str(data) + "\n```"

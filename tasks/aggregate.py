"""Stage 2: merge the round's tree shards and aggregate them (`rstar.data.qvalues.aggregate`).

    agg = aggregate_trees([trees_0, trees_1, ...], round_idx=2)

The artifact (`rounds/<k>/aggregate/<digest>`) holds the merged `nodes.parquet` and `problems.parquet` (every later
stage of the round reads these, not the shards) and the aggregate's tables: `problem_stats.parquet` (outcomes,
solve rate, difficulty per problem), `depths.parquet` (Q statistics per depth), `steps.parquet` and
`rerun.parquet` (the problems that get more rollouts next round; `shard_problems` of round k+1 reads it).
Its digest covers the digests of exactly the shards given, so a round that tolerated a failed shard has a different
aggregate from a complete one, and the complete re-run replaces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
from prefect import task

from infra.storage import ArtifactRef
from tasks.common import DETERMINISTIC, StageOutput, materialize, retry_on_transient
from tasks.shard import RERUN_FILE

NODES_FILE = "nodes.parquet"
PROBLEMS_TABLE = "problems.parquet"
STATS_FILE = "problem_stats.parquet"
DEPTHS_FILE = "depths.parquet"
STEPS_FILE = "steps.parquet"


def run_aggregate(shard_dirs: list[Path], out: Path) -> StageOutput:
    """Merge the shards' tables, aggregate them (one `rstar.data.qvalues.aggregate` call), write every table."""
    from rstar.data.qvalues import aggregate
    from rstar.data.trees import load_tree_dirs

    data = load_tree_dirs(shard_dirs)
    if data.skipped_files:
        raise ValueError(f"unreadable tree files in the round's shards: {data.skipped_files[:3]}")
    agg = aggregate(data.nodes, data.problems)
    data.nodes.write_parquet(out / NODES_FILE)
    data.problems.write_parquet(out / PROBLEMS_TABLE)
    agg.problems.write_parquet(out / STATS_FILE)
    agg.depths.write_parquet(out / DEPTHS_FILE)
    agg.steps.write_parquet(out / STEPS_FILE)
    agg.rerun.write_parquet(out / RERUN_FILE)
    stats = agg.problems
    n = stats.height
    solved = stats.filter(pl.col("correct") > 0).height
    metrics = {
        "problems": float(n),
        "solved_problems": float(solved),
        "coverage": solved / n if n else 0.0,
        "nodes": float(data.nodes.height),
        "rerun_problems": float(agg.rerun.height),
    }
    rate = stats["solve_rate"].mean() if n else None
    if isinstance(rate, float):
        metrics["mean_solve_rate"] = rate
    return StageOutput(rows=data.nodes.height, metrics=metrics, info={"shards": len(shard_dirs)})


def load_aggregate(folder: Path) -> Any:
    """The `rstar.data.qvalues.Aggregate` stored in an aggregate artifact folder."""
    from rstar.data.qvalues import Aggregate

    return Aggregate(
        problems=pl.read_parquet(folder / STATS_FILE),
        depths=pl.read_parquet(folder / DEPTHS_FILE),
        rerun=pl.read_parquet(folder / RERUN_FILE),
        steps=pl.read_parquet(folder / STEPS_FILE),
    )


def aggregate_trees_fn(trees: list[ArtifactRef], round_idx: int, parent_run_id: str | None = None) -> ArtifactRef:
    """The body of `aggregate_trees` (callable without Prefect)."""
    if not trees:
        raise ValueError(f"round {round_idx}: no tree shards to aggregate")
    parents = {f"trees-{i:04d}": ref for i, ref in enumerate(trees)}
    return materialize(
        stage="aggregate",
        round_idx=round_idx,
        parents=parents,
        config={"shards": len(trees)},
        build=lambda out, inputs: run_aggregate([inputs[r] for r in sorted(inputs)], out),
        parent_run_id=parent_run_id,
        run_name=f"aggregate-r{round_idx}",
    )


@task(
    name="aggregate-trees",
    task_run_name="aggregate-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_transient,
)
def aggregate_trees(trees: list[ArtifactRef], round_idx: int, parent_run_id: str | None = None) -> ArtifactRef:
    """Merge shards and aggregate Q-values; see the module docstring."""
    return aggregate_trees_fn(trees, round_idx, parent_run_id)

"""Stage 0: bring a problem set into the store, then cut it into synthesis shards.

    problems = ingest_problems("train.jsonl")                           # shared/problems/<content digest>
    shards = shard_problems(problems, shard_size=64, round_idx=3, boost=previous_aggregate)

`ingest_problems` addresses the problem set by its *content* (ids, questions, answers), so the same file under
another name is the same artifact, and an edited file is a new one. Its Prefect cache key includes the bytes of a
local source file for the same reason.

`shard_problems` writes one artifact per shard (`rounds/<k>/shards/<digest>`: `problems.jsonl`, and
`rollouts.json` mapping problem id -> rollouts for the problems that get more than the round's default because the
previous round left them unsolved or short of correct trajectories: the `rerun` table of its aggregate).
Shards are consecutive slices of the problem order: deterministic, so a re-run of a round finds the same shards.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

from infra.storage import ArtifactRef, content_digest, open_store
from rstar.data.problems import load_problems, write_problems_jsonl
from rstar.types import Problem
from tasks.common import (
    DETERMINISTIC,
    StageOutput,
    is_artifact_uri,
    materialize,
    read_json,
    ref_for,
    retry_on_transient,
    run_logger,
    write_json,
)

PROBLEMS_FILE = "problems.jsonl"
ROLLOUTS_FILE = "rollouts.json"
RERUN_FILE = "rerun.parquet"  # written by the aggregate stage; read here to boost the previous round's unsolved


class SourceFileContent(CachePolicy):
    """Cache key part: the bytes of the `source` input when it is a local file (an edited file is a new key)."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        source = (inputs or {}).get("source")
        path = Path(str(source)) if source is not None else None
        if path is None or not path.is_file():
            return None
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return hash_objects(h.hexdigest(), raise_on_failure=True)


def problems_digest(problems: list[Problem]) -> str:
    """Content address of a problem set: ids, questions, answers, sources and levels, in order."""
    return content_digest([[p.id, p.question, p.answer, p.source, p.level, p.subject] for p in problems])


def ingest_problems_fn(source: str, limit: int | None = None) -> ArtifactRef:
    """The body of `ingest_problems` (callable without Prefect)."""
    if is_artifact_uri(source):
        return ref_for(source)
    problems, report = load_problems(source, limit=limit)
    logger = run_logger()
    logger.info(report.summary())
    for err in report.errors[:20]:
        logger.warning("problem set %s: %s", source, err)
    if not problems:
        raise ValueError(f"problem set {source!r} holds no usable problems")

    def build(out: Path, _inputs: Any) -> StageOutput:
        write_problems_jsonl(problems, out / PROBLEMS_FILE)
        return StageOutput(
            rows=len(problems),
            metrics={"problems": float(len(problems)), "skipped_rows": float(report.skipped)},
            info={"source": str(source), "skipped": report.skipped, "duplicates": report.duplicates},
        )

    return materialize(
        stage="problems",
        round_idx=None,
        parents={},
        config={"content": problems_digest(problems)},
        build=build,
        run_name="ingest-problems",
    )


@task(
    name="ingest-problems",
    task_run_name="ingest-problems",
    cache_policy=DETERMINISTIC + SourceFileContent(),
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient,
)
def ingest_problems(source: str, limit: int | None = None) -> ArtifactRef:
    """Load a problem file (JSONL/JSON/Parquet), dataset id or problems artifact URI into the store; see module doc."""
    return ingest_problems_fn(source, limit)


def shard_problems_fn(
    problems: ArtifactRef,
    shard_size: int,
    round_idx: int,
    rollouts: int,
    boost: ArtifactRef | None = None,
    extra_unsolved: int | None = None,
    parent_run_id: str | None = None,
) -> list[ArtifactRef]:
    """The body of `shard_problems` (callable without Prefect)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    store = open_store()
    src = store.get_artifact(problems.uri)
    plist, _ = load_problems(src / PROBLEMS_FILE)
    extra: dict[str, int] = {}
    if boost is not None:
        rerun_path = store.get_artifact(boost.uri) / RERUN_FILE
        if rerun_path.exists():
            rerun = pl.read_parquet(rerun_path)
            if extra_unsolved is not None:  # the round's own setting for problems with no correct answer
                rerun = rerun.with_columns(
                    pl.when(pl.col("rerun_reason") == "hard")
                    .then(pl.lit(extra_unsolved))
                    .otherwise(pl.col("extra_rollouts"))
                    .alias("extra_rollouts")
                )
            extra = dict(zip(rerun["problem_id"].to_list(), rerun["extra_rollouts"].to_list(), strict=True))
    parents = {"problems": problems, **({"boost": boost} if boost is not None else {})}
    n_shards = (len(plist) + shard_size - 1) // shard_size
    refs = []
    for i in range(n_shards):
        part = plist[i * shard_size : (i + 1) * shard_size]
        per_problem = {p.id: rollouts + int(extra[p.id]) for p in part if extra.get(p.id)}

        def build(
            out: Path, _inputs: Any, part: list[Problem] = part, per: dict[str, int] = per_problem
        ) -> StageOutput:
            write_problems_jsonl(part, out / PROBLEMS_FILE)
            write_json(out / ROLLOUTS_FILE, per)
            return StageOutput(rows=len(part), metrics={"boosted": float(len(per))})

        refs.append(
            materialize(
                stage="shards",
                round_idx=round_idx,
                parents=parents,
                config={"index": i, "shard_size": shard_size, "rollouts": rollouts, "boosted": per_problem},
                build=build,
                parent_run_id=parent_run_id,
                track=False,  # a shard is a slice of a logged problem set: one MLflow run each would be noise
            )
        )
    run_logger().info(
        "round %d: %d problems in %d shards of <= %d (%d get extra rollouts)",
        round_idx,
        len(plist),
        n_shards,
        shard_size,
        sum(1 for p in plist if extra.get(p.id)),
    )
    return refs


@task(
    name="shard-problems",
    task_run_name="shard-problems-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient,
)
def shard_problems(
    problems: ArtifactRef,
    shard_size: int,
    round_idx: int,
    rollouts: int,
    boost: ArtifactRef | None = None,
    extra_unsolved: int | None = None,
    parent_run_id: str | None = None,
) -> list[ArtifactRef]:
    """Cut the problem set into shards of `shard_size`; see the module docstring.

    With `boost` (the previous round's aggregate), each problem on its re-run list gets more rollouts than
    `rollouts`: `extra_unsolved` more when it had no correct answer (None: the aggregate's own number), the
    aggregate's number otherwise (few correct trajectories, failed search).
    """
    return shard_problems_fn(problems, shard_size, round_idx, rollouts, boost, extra_unsolved, parent_run_id)


def shard_rollouts(shard_dir: Path) -> dict[str, int]:
    """problem id -> rollouts for the boosted problems of a shard folder."""
    path = shard_dir / ROLLOUTS_FILE
    return {str(k): int(v) for k, v in read_json(path).items()} if path.exists() else {}

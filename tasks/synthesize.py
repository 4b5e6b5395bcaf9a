"""Stage 1: MCTS over one shard of problems (`rstar.search.synthesize`), written as node and problem Parquet tables.

    ref = synthesize_shard(shard_ref, shard_id=3, policy="fake:oracle", ppm=None,
                           search={"mode": "terminal", "rollouts": 8, "candidates": 4}, seed=0, round_idx=1)

One Prefect task per shard (`mcts-shard-0003`), coarse on purpose: a shard is minutes of model time, so the
orchestration overhead (~10 ms a task, SQLite locking under bursts) stays negligible.

- Cache key: the shard (its digest), the model sources, the search config, the seed, the round and this task's
  source. A re-run of a round after a crash re-uses every finished shard; the store check in `materialize` does
  the same even when Prefect's own records are gone.
- Retries: only transient errors (a model server or the store unreachable, a network timeout), twice, with backoff.
- Timeout: the flow sets `timeout_seconds` per round (`RoundParams.shard_timeout_s`); a shard that overruns fails
  and is not retried (it would overrun again). In a worker thread the timeout takes effect between Python
  operations, which is where the search spends its bookkeeping.
- Model sources that are artifact URIs (an earlier round's trained policy / PPM) are fetched from the store and
  loaded as `hf:` folders; specs (`fake:`, `tiny:0`, `openai:URL#MODEL`, ...) are loaded as they are.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from infra.storage import ArtifactRef, artifact_key
from tasks.common import (
    DETERMINISTIC,
    StageOutput,
    materialize,
    model_identity,
    resolve_model,
    retry_on_transient,
    shared_executor,
    stage_digest,
)
from tasks.shard import PROBLEMS_FILE, shard_rollouts

NODES_FILE = "nodes.parquet"
PROBLEM_TABLE_FILE = "problems.parquet"


def search_config(search: dict[str, Any], seed: int, round_idx: int) -> Any:
    """The `SearchConfig` of a round: the paper's settings for round k (`SearchConfig.for_round`) plus overrides."""
    from rstar.config import SearchConfig

    return SearchConfig.for_round(round_idx, **{**search, "seed": seed})


def open_executor() -> Any:
    """The code executor of the search: the process's shared sandbox (`tasks.common.shared_executor`)."""
    return shared_executor()


def work_dir(key: str) -> Path:
    """A per-artifact scratch folder that survives a crash: the search streams finished problems into it, so a
    re-run of a killed shard resumes where it stopped instead of starting over. Removed once the artifact is stored."""
    from infra.settings import get_settings

    return get_settings().cache_dir / "work" / key.replace("/", "_")


def run_search(
    shard_dir: Path,
    out: Path,
    work: Path,
    policy: str,
    ppm: str | None,
    search: dict[str, Any],
    seed: int,
    round_idx: int,
) -> StageOutput:
    """Load the shard and the models, run the search (`rstar.search.io.synthesize_to_dir`, resumable), write the
    node and problem tables sorted by problem, so the artifact's bytes do not depend on how often it was resumed."""
    from rstar.data.problems import load_problems
    from rstar.models.registry import load_policy, load_reward_model
    from rstar.search.io import load_synthesis, synthesize_to_dir

    problems, _ = load_problems(shard_dir / PROBLEMS_FILE)
    config = search_config(search, seed, round_idx)
    policy_lm = load_policy(resolve_model(policy) or policy)
    reward_model = load_reward_model(resolve_model(ppm)) if config.uses_ppm else None
    summary = synthesize_to_dir(
        problems,
        work,
        policy_lm,
        open_executor(),
        config,
        reward_model=reward_model,
        rollouts_for=shard_rollouts(shard_dir) or None,
        round_idx=round_idx,
        resume=True,
    )
    nodes, probs = load_synthesis(work)
    nodes.sort(["problem_id", "expansion_order"]).write_parquet(out / NODES_FILE)
    probs.sort("problem_id").write_parquet(out / PROBLEM_TABLE_FILE)
    totals = summary.get("totals", {})
    n = probs.height
    solved = int(probs["solved"].sum()) if n else 0
    failed = int(probs["error"].is_not_null().sum()) if n else 0
    return StageOutput(
        rows=nodes.height,
        metrics={
            "problems": float(n),
            "solved": float(solved),
            "failed_problems": float(failed),
            "solve_rate": solved / n if n else 0.0,
            "nodes": float(nodes.height),
            "tokens_generated": float(totals.get("tokens_generated", 0) or 0),
        },
        info={"resumed_problems": summary.get("skipped_already_done", 0)},
        after_commit=[lambda: shutil.rmtree(work, ignore_errors=True)],
    )


def synthesize_shard_fn(
    shard: ArtifactRef,
    shard_id: int,
    policy: str,
    ppm: str | None,
    search: dict[str, Any],
    seed: int,
    round_idx: int,
    parent_run_id: str | None = None,
) -> ArtifactRef:
    """The body of `synthesize_shard` (callable without Prefect)."""
    config = {"search": dict(search), "seed": seed, "shard": shard_id}
    parents = {"shard": shard}
    models = {"policy": model_identity(policy), "ppm": model_identity(ppm)}
    work = work_dir(artifact_key(round_idx, "trees", stage_digest("trees", parents, config, models)))
    return materialize(
        stage="trees",
        round_idx=round_idx,
        parents=parents,
        config=config,
        models=models,
        build=lambda out, inputs: run_search(inputs["shard"], out, work, policy, ppm, search, seed, round_idx),
        parent_run_id=parent_run_id,
        run_name=f"mcts-shard-{shard_id:04d}",
    )


@task(
    name="synthesize-shard",
    task_run_name="mcts-shard-{shard_id:04d}",
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_on_transient,
)
def synthesize_shard(
    shard: ArtifactRef,
    shard_id: int,
    policy: str,
    ppm: str | None,
    search: dict[str, Any],
    seed: int,
    round_idx: int,
    parent_run_id: str | None = None,
) -> ArtifactRef:
    """MCTS over one shard; returns the `trees` artifact (nodes.parquet + problems.parquet). See module docstring."""
    return synthesize_shard_fn(shard, shard_id, policy, ppm, search, seed, round_idx, parent_run_id)

"""Stage 5: evaluate a policy (and PPM) on benchmarks with one `rstar.eval` call; the report folder is the artifact.

    ref = evaluate_task(policy=policy_ref.uri, ppm=None, benchmarks=["gsm8k"], mode="greedy", budget=1,
                        limit=50, seed=0, round_idx=2)
    accuracy = accuracy_of(ref)                    # {"gsm8k": 0.41}

The artifact (`rounds/<k>/eval/<digest>`, or `shared/eval/<digest>` outside a round) holds what the evaluation
library writes (summary, per-problem Parquet, plots); the manifest's metrics hold `accuracy/<benchmark>` for each
benchmark, which the round's Prefect table artifact and the promotion gate read. Sampling modes depend on the seed,
so it is an input (and part of the cache key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from prefect import task

from infra.storage import ArtifactRef, open_store
from tasks.common import (
    DETERMINISTIC,
    StageOutput,
    materialize,
    model_identity,
    resolve_model,
    retry_on_transient,
    run_logger,
    shared_executor,
)

ACCURACY_PREFIX = "accuracy/"


def run_eval(
    out: Path,
    policy: str,
    ppm: str | None,
    benchmarks: list[str],
    mode: str,
    budget: int,
    limit: int | None,
    seed: int,
    extra: dict[str, Any],
) -> StageOutput:
    """One `rstar.eval.runner.evaluate` call; the accuracy of every benchmark becomes a metric."""
    from rstar.eval.config import EvalConfig
    from rstar.eval.runner import evaluate

    report = evaluate(
        resolve_model(policy) or policy,
        list(benchmarks),
        modes=[mode],
        budgets=[budget],
        out_dir=out,
        reward_model=resolve_model(ppm),
        executor=shared_executor(),
        config=EvalConfig(**{**extra, "seed": seed}),
        limit=limit,
        plot=True,
    )
    for err in report.errors[:20]:
        run_logger().warning("evaluation: %s", err)
    return StageOutput(rows=len(report.results), metrics=eval_metrics(report.summaries))


def eval_metrics(summaries: Any) -> dict[str, float]:
    """`accuracy/<benchmark>` and `n/<benchmark>` (problems) from an evaluation report's cell summaries."""
    metrics: dict[str, float] = {}
    for cell in summaries:
        metrics[f"{ACCURACY_PREFIX}{cell.benchmark}"] = float(cell.accuracy)
        metrics[f"n/{cell.benchmark}"] = float(cell.problems)
    return metrics


def evaluate_fn(
    policy: str,
    ppm: str | None,
    benchmarks: list[str],
    mode: str,
    budget: int,
    limit: int | None,
    seed: int,
    round_idx: int | None,
    extra: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> ArtifactRef:
    extra = dict(extra or {})
    return materialize(
        stage="eval",
        round_idx=round_idx,
        parents={},
        config={"benchmarks": list(benchmarks), "mode": mode, "budget": budget, "limit": limit, "seed": seed, **extra},
        models={"policy": model_identity(policy), "ppm": model_identity(ppm)},
        build=lambda out, _inputs: run_eval(out, policy, ppm, benchmarks, mode, budget, limit, seed, extra),
        parent_run_id=parent_run_id,
        run_name="eval" if round_idx is None else f"eval-r{round_idx}",
    )


def eval_run_name(parameters: dict[str, Any]) -> str:
    """`eval-greedy-r3` inside round 3, `eval-greedy` outside a round."""
    k = parameters.get("round_idx")
    return f"eval-{parameters.get('mode')}" + ("" if k is None else f"-r{k}")


@task(
    name="evaluate",
    task_run_name=cast(Any, eval_run_name),  # Prefect passes the parameters to a callable named `parameters`
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_on_transient,
)
def evaluate_task(
    policy: str,
    ppm: str | None,
    benchmarks: list[str],
    mode: str,
    budget: int,
    limit: int | None,
    seed: int,
    round_idx: int | None,
    extra: dict[str, Any] | None = None,
    parent_run_id: str | None = None,
) -> ArtifactRef:
    """Evaluate a model source on benchmarks; returns the evaluation artifact (accuracy in its manifest metrics)."""
    return evaluate_fn(policy, ppm, benchmarks, mode, budget, limit, seed, round_idx, extra, parent_run_id)


def accuracy_of(ref: ArtifactRef | str) -> dict[str, float]:
    """{benchmark: accuracy} from an evaluation artifact's manifest."""
    m = open_store().read_manifest(ref if isinstance(ref, str) else ref.uri)
    return {k[len(ACCURACY_PREFIX) :]: float(v) for k, v in m.metrics.items() if k.startswith(ACCURACY_PREFIX)}

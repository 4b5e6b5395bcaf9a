"""The `evaluate` flow: judge any policy (and PPM) on benchmarks with the evaluation library, outside a round.

    from flows.evaluate import evaluate
    accuracy = evaluate("models:/rstar-policy@champion" or "hf:/path" or artifact_uri, options=EvalOptions(...))

It wraps the same task the rounds use (`tasks.evaluate.evaluate_task`, one `rstar.eval` call, cached on its inputs),
so evaluating a round's policy again with the same options costs nothing. It publishes a table artifact of accuracy
per benchmark and returns {benchmark: accuracy}.
"""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.params import EvalOptions
from tasks.evaluate import accuracy_of, evaluate_task


def eval_run_name() -> str:
    from prefect.runtime import flow_run

    policy = str(flow_run.parameters.get("policy", "model"))
    short = policy.rstrip("/").rsplit("/", 1)[-1][:40]
    return f"eval-{short}"


@flow(name="evaluate", flow_run_name=eval_run_name)
def evaluate(
    policy: str, ppm: str | None = None, options: EvalOptions = EvalOptions(), seed: int = 0
) -> dict[str, float]:
    """Evaluate `policy` (spec or model artifact URI) on `options.benchmarks`; returns {benchmark: accuracy}."""
    ref = evaluate_task(
        policy, ppm, options.benchmarks, options.mode, options.budget, options.limit, seed, None, options.extra
    )
    accuracy = accuracy_of(ref)
    create_table_artifact(
        key="evaluation",
        table=[
            {"benchmark": b, "mode": options.mode, "budget": options.budget, "accuracy": round(a, 4), "policy": policy}
            for b, a in sorted(accuracy.items())
        ]
        or [{"benchmark": "-", "mode": options.mode, "budget": options.budget, "accuracy": None, "policy": policy}],
        description=f"accuracy of {policy}",
    )
    return accuracy

"""Stage 6 (side effects, never cached): register the round's models in MLflow and run the promotion gate.

    promoted = register_and_promote(policy_ref, ppm_ref, eval_ref, round_idx=2)   # {"policy": True, "ppm": False}

Each trained model is registered (source = its artifact URI, tags = round, digest, flow run) with the alias
`candidate`; `Tracker.promote` then moves `champion` to it only if its evaluation does not regress against the
current champion (the metric is the mean accuracy over the round's benchmarks). Registering twice would create
two versions, so this task has `NO_CACHE`: it runs on every run of the round, and is the only stage that does.
"""

from __future__ import annotations

from prefect import task

from infra.storage import ArtifactRef
from infra.tracking import get_tracker
from tasks.common import SIDE_EFFECT, retry_on_transient, run_logger
from tasks.evaluate import accuracy_of


def register_and_promote_fn(
    policy: ArtifactRef | None,
    ppm: ArtifactRef | None,
    evaluation: ArtifactRef | None,
    round_idx: int,
    tags: dict[str, str] | None = None,
) -> dict[str, bool]:
    from infra.settings import get_settings

    settings = get_settings()
    tracker = get_tracker()
    accuracy = accuracy_of(evaluation) if evaluation is not None else {}
    metric = sum(accuracy.values()) / len(accuracy) if accuracy else None
    promoted: dict[str, bool] = {}
    logger = run_logger()
    for role, ref, name in (
        ("policy", policy, settings.policy_model_name),
        ("ppm", ppm, settings.ppm_model_name),
    ):
        if ref is None:
            continue
        version = tracker.register_model(
            name,
            ref.uri,
            tags={"round": str(round_idx), "digest": ref.digest, "stage": ref.stage, **(tags or {})},
            alias="candidate",
        )
        if metric is None:
            promoted[role] = False
            logger.info("%s %s v%s registered as candidate (no evaluation: not promoted)", role, name, version)
            continue
        # The PPM has no benchmark of its own: it is judged by the round it belongs to.
        promoted[role] = bool(tracker.promote(name, version, metric, higher_is_better=True))
        logger.info(
            "%s %s v%s: mean accuracy %.4f -> %s",
            role,
            name,
            version,
            metric,
            "champion" if promoted[role] else "kept as candidate",
        )
    return promoted


@task(
    name="register-and-promote",
    task_run_name="promote-r{round_idx}",
    cache_policy=SIDE_EFFECT,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_on_transient,
)
def register_and_promote(
    policy: ArtifactRef | None,
    ppm: ArtifactRef | None,
    evaluation: ArtifactRef | None,
    round_idx: int,
    tags: dict[str, str] | None = None,
) -> dict[str, bool]:
    """Register the round's policy and PPM (alias `candidate`); move `champion` unless the evaluation regresses."""
    return register_and_promote_fn(policy, ppm, evaluation, round_idx, tags)

"""The `evolution_round` flow: one round of rStar-Math self-evolution as a DAG of thin, cached Prefect tasks.

    from flows.params import RoundParams, TrainingOptions
    from flows.round import evolution_round
    result = evolution_round(RoundParams(round_idx=1, problems="train.jsonl", policy="openai:http://gpu:8000/v1#big",
                                         training=TrainingOptions(base_model="hf:/models/base")))

    ingest-problems -> shard-problems-rK -> mcts-shard-0000 .. mcts-shard-NNNN (concurrent, tolerated failures)
        -> aggregate-rK -> build-sft-rK, build-pairs-rK -> data-report-rK
        -> train-policy-rK -> train-ppm-rK -> eval-<mode>-rK -> promote-rK

Every task passes small `ArtifactRef`s (URI, digest, rows), never trees, frames or models; every output lives in
the artifact store under `rounds/<k>/<stage>/<digest>`. Re-running a round with the same parameters re-uses every
finished task (Prefect cache: inputs + task source; and the store itself, when Prefect's records are gone): after
a crash or a failed shard, only what is missing is computed. docs/pipeline.md has the details.

Shard failures are decided here, explicitly: up to `max_failed_shard_fraction` of the shards may fail; each failure
is reported in a Prefect artifact and the flow log, and the round goes on with the others. Above that fraction (or
when no shard succeeded) the round fails with a message naming the shards and what to do. Per round the flow
publishes: a table of accuracy per benchmark, the data-quality report (markdown), and links to the MLflow run and
the round's artifact prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State

from flows.params import RoundParams, RoundResult
from infra.settings import get_settings
from infra.storage import ArtifactRef, open_store
from infra.tracking import get_tracker
from tasks.aggregate import aggregate_trees
from tasks.build_data import build_ppm_pairs, build_sft_data, data_report, report_markdown
from tasks.common import is_artifact_uri, ref_for, run_logger
from tasks.evaluate import accuracy_of, evaluate_task
from tasks.promote import register_and_promote
from tasks.shard import ingest_problems, shard_problems
from tasks.synthesize import synthesize_shard
from tasks.train import train_policy_task, train_ppm_task

LOCAL_MODEL_PREFIXES = ("hf:", "tiny", "smollm2-135m")


class RoundFailed(RuntimeError):
    """The round cannot produce trustworthy outputs (too many failed shards, nothing to train on, bad setup)."""


def _param(name: str, field: str, default: Any) -> Any:
    """A field of a model-valued flow parameter, whether the run got a model instance or its JSON dict."""
    from prefect.runtime import flow_run

    value = flow_run.parameters.get(name)
    if isinstance(value, dict):
        return value.get(field, default)
    return getattr(value, field, default)


def round_run_name() -> str:
    return f"round-{_param('params', 'round_idx', 'x')}"


def is_local_model(source: str) -> bool:
    """Whether a model source can be fine-tuned here (an artifact, an `hf:` folder, or a built-in local model)."""
    return is_artifact_uri(source) or source.startswith(LOCAL_MODEL_PREFIXES) or Path(source).is_dir()


def check_setup(params: RoundParams) -> None:
    """Fail before any model time is spent when the parameters cannot work together."""
    t = params.training
    if t.train_policy and (t.base_model is None or t.continue_training) and not is_local_model(params.policy):
        raise RoundFailed(
            f"round {params.round_idx}: the policy {params.policy!r} cannot be fine-tuned here; set "
            "training.base_model (e.g. 'smollm2-135m' or 'hf:/path/to/base') or training.train_policy=false"
        )
    no_ppm_base = t.ppm_base is None and t.base_model is None and not is_local_model(params.policy)
    if t.train_ppm and not t.train_policy and no_ppm_base:
        raise RoundFailed(
            f"round {params.round_idx}: no backbone for the PPM: set training.ppm_base or training.base_model"
        )
    if params.search.mode == "ppm" and params.ppm is None:
        raise RoundFailed(f"round {params.round_idx}: search mode 'ppm' needs a PPM (params.ppm)")


def run_shards(
    params: RoundParams, shards: list[ArtifactRef], run_id: str | None
) -> tuple[dict[int, ArtifactRef], list[dict[str, Any]]]:
    """Synthesize every shard; return the trees by shard id and the failures (a failed shard never stops the others).

    With `shard_concurrency` 1 the shards run one after the other in the flow's own thread, where the shard timeout
    can interrupt anything; with more, at most that many run at once in the task runner's threads. A `fanout` with
    another backend (Ray, a deployment on a GPU work pool) hands the shards to `flows.synthesize_shard`, which runs
    the same task body there and returns the same pair.
    """
    if params.fanout is not None and params.fanout.backend != "local":
        from flows.synthesize_shard import fan_out_shards

        return fan_out_shards(
            shards,
            policy=params.policy,
            ppm=params.ppm,
            search=params.search.config_dict(),
            seed=params.seed,
            round_idx=params.round_idx,
            fanout=params.fanout,
            shard_timeout_s=params.shard_timeout_s,
            parent_run_id=run_id,
        )
    synth = synthesize_shard.with_options(timeout_seconds=params.shard_timeout_s)
    search = params.search.config_dict()
    done: dict[int, ArtifactRef] = {}
    failures: list[dict[str, Any]] = []

    def record(i: int, state: State[ArtifactRef]) -> None:
        if state.is_completed():
            done[i] = state.result()
        else:
            failures.append(
                {
                    "shard": i,
                    "shard_uri": shards[i].uri,
                    "state": state.name or str(state.type),
                    "message": state.message or "",
                }
            )

    def args(i: int) -> dict[str, Any]:
        return {
            "shard": shards[i],
            "shard_id": i,
            "policy": params.policy,
            "ppm": params.ppm,
            "search": search,
            "seed": params.seed,
            "round_idx": params.round_idx,
            "parent_run_id": run_id,
        }

    if params.shard_concurrency == 1:
        for i in range(len(shards)):
            record(i, synth(**args(i), return_state=True))
        return done, failures

    pending = list(range(len(shards)))
    running: dict[PrefectFuture[ArtifactRef], int] = {}
    while pending or running:
        while pending and len(running) < params.shard_concurrency:
            i = pending.pop(0)
            running[synth.submit(**args(i))] = i
        finished = next(iter(as_completed(list(running))))
        i = running.pop(finished)
        finished.wait()  # records the final state locally (the API's copy of it may lag behind)
        record(i, finished.state)
    return done, sorted(failures, key=lambda f: f["shard"])


def report_failures(params: RoundParams, n_shards: int, failures: list[dict[str, Any]], n_ok: int) -> None:
    """Publish failed shards (artifact + log); raise `RoundFailed` above the tolerated fraction or with no data."""
    if not failures:
        return
    k = params.round_idx
    frac = len(failures) / n_shards
    allowed = params.max_failed_shard_fraction
    rows = "\n".join(f"| {f['shard']:04d} | {f['state']} | {_md_cell(f['message'])} |" for f in failures)
    verdict = (
        f"tolerated (<= {allowed:.0%}): the round continues without them"
        if frac <= allowed and n_ok
        else f"above the tolerated {allowed:.0%}: the round fails"
    )
    create_markdown_artifact(
        key=f"round-{k}-shard-failures",
        markdown=(
            f"# Round {k}: {len(failures)} of {n_shards} synthesis shards failed ({frac:.0%}, {verdict})\n\n"
            "| shard | state | message |\n|---|---|---|\n"
            f"{rows}\n\nRe-run the round with the same parameters: finished shards are re-used, only these run again.\n"
        ),
        description=f"round {k}: failed synthesis shards",
    )
    logger = run_logger()
    for f in failures:
        logger.error("round %d: shard %04d failed (%s): %s", k, f["shard"], f["state"], f["message"])
    if frac > allowed or not n_ok:
        ids = ", ".join(f"{f['shard']:04d}" for f in failures[:10]) + (" ..." if len(failures) > 10 else "")
        raise RoundFailed(
            f"round {k}: {len(failures)} of {n_shards} synthesis shards failed ({frac:.0%} > the tolerated "
            f"{allowed:.0%}; shards {ids}); first error: {failures[0]['message']}. Re-run the round with the same "
            "parameters to compute only the failed shards, or raise max_failed_shard_fraction."
        )
    logger.warning(
        "round %d: continuing with %d of %d shards (%d failed, %.0f%% <= tolerated %.0f%%)",
        k, n_ok, n_shards, len(failures), 100 * frac, 100 * allowed,
    )  # fmt: skip


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")[:300]


def mlflow_run_url(run_id: str | None) -> str | None:
    """A browser URL of the round's MLflow run when tracking goes to a server, else None."""
    if not run_id:
        return None
    tracker = get_tracker()
    url_of = getattr(tracker, "run_url", None)
    if callable(url_of):
        url = url_of(run_id)
        return str(url) if url else None
    uri = get_settings().mlflow_tracking_uri
    return f"{uri.rstrip('/')}/#/runs/{run_id}" if uri.startswith(("http://", "https://")) else None


def publish_round_artifacts(
    params: RoundParams,
    accuracy: dict[str, float],
    report: ArtifactRef | None,
    coverage: float | None,
    run_id: str | None,
    prefix: str,
) -> None:
    """The per-round Prefect artifacts: accuracy table, data-quality summary, MLflow run and artifact-prefix links."""
    k = params.round_idx
    ev = params.evaluation
    create_table_artifact(
        key=f"round-{k}-accuracy",
        table=[
            {"round": k, "benchmark": b, "mode": ev.mode, "budget": ev.budget, "accuracy": round(a, 4)}
            for b, a in sorted(accuracy.items())
        ]
        or [{"round": k, "benchmark": "-", "mode": ev.mode, "budget": ev.budget, "accuracy": None}],
        description=f"round {k}: accuracy per benchmark of the round's policy",
    )
    summary = f"Coverage (problems with a correct trajectory): **{coverage:.1%}**\n\n" if coverage is not None else ""
    body = report_markdown(open_store().get_artifact(report.uri)) if report is not None else "_no report_"
    create_markdown_artifact(
        key=f"round-{k}-data-quality",
        markdown=f"# Round {k}: data quality\n\n{summary}{body}",
        description=f"round {k}: data-quality report",
    )
    url = mlflow_run_url(run_id)
    if url:
        create_link_artifact(key=f"round-{k}-mlflow-run", link=url, link_text=f"MLflow run of round {k}")
    else:
        create_markdown_artifact(
            key=f"round-{k}-mlflow-run",
            markdown=f"MLflow run of round {k}: `{run_id or 'tracking off'}` at `{get_settings().mlflow_tracking_uri}`",
        )
    create_link_artifact(key=f"round-{k}-artifacts", link=prefix, link_text=f"artifacts of round {k}")


@flow(name="evolution-round", flow_run_name=round_run_name)
def evolution_round(params: RoundParams) -> RoundResult:
    """One self-evolution round; see the module docstring."""
    check_setup(params)
    k = params.round_idx
    logger = run_logger()
    store = open_store()
    prefix = store.uri(f"rounds/{k}")
    tracker = get_tracker()
    # The tracker tags every run and model version with the Prefect flow run and the git commit itself.
    with tracker.round_run(k, params=params.model_dump(mode="json")) as run_id:
        problems = ingest_problems(params.problems, params.problem_limit)
        boost = ref_for(params.boost) if params.boost else None
        shards = shard_problems(
            problems,
            params.shard_size,
            k,
            params.search.rollouts,
            boost,
            params.search.extra_rollouts_unsolved,
            parent_run_id=run_id,
        )
        done, failures = run_shards(params, shards, run_id)
        report_failures(params, len(shards), failures, len(done))
        trees = [done[i] for i in sorted(done)]

        agg = aggregate_trees(trees, k, parent_run_id=run_id)
        sft = build_sft_data(agg, k, params.training.sft_top_k, parent_run_id=run_id)
        pairs = build_ppm_pairs(agg, k, parent_run_id=run_id)
        report = data_report(agg, sft, pairs, k, parent_run_id=run_id)
        coverage = agg_metric(agg, "coverage")

        t = params.training
        policy_ref = ppm_ref = None
        if t.train_policy and sft.rows:
            base = params.policy if t.continue_training else (t.base_model or params.policy)
            policy_ref = train_policy_task(sft, base, t.policy_config(), params.seed, k, parent_run_id=run_id)
        elif t.train_policy:
            logger.warning("round %d: no SFT rows (no problem solved): the policy is carried over untrained", k)
        next_policy = policy_ref.uri if policy_ref is not None else params.policy
        if t.train_ppm and pairs.rows:
            ppm_base = t.ppm_base or (policy_ref.uri if policy_ref is not None else (t.base_model or params.policy))
            ppm_ref = train_ppm_task(pairs, ppm_base, t.ppm_config(), params.seed, k, parent_run_id=run_id)
        elif t.train_ppm:
            logger.warning("round %d: no preference pairs: the PPM is carried over untrained", k)
        next_ppm = ppm_ref.uri if ppm_ref is not None else params.ppm

        ev = params.evaluation
        eval_ref = None
        accuracy: dict[str, float] = {}
        if ev.enabled:
            eval_ref = evaluate_task(
                next_policy,
                next_ppm,
                ev.benchmarks,
                ev.mode,
                ev.budget,
                ev.limit,
                params.seed,
                k,
                ev.extra,
                parent_run_id=run_id,
            )
            accuracy = accuracy_of(eval_ref)
        promoted: dict[str, bool] = {}
        if params.register_models and (policy_ref is not None or ppm_ref is not None):
            promoted = register_and_promote(policy_ref, ppm_ref, eval_ref, k)
        if accuracy:
            tracker.log_metrics({f"accuracy/{b}": a for b, a in accuracy.items()})
        if coverage is not None:
            tracker.log_metrics({"coverage": coverage})

    publish_round_artifacts(params, accuracy, report, coverage, run_id, prefix)
    logger.info(
        "round %d done: coverage %s, accuracy %s, policy %s",
        k,
        "n/a" if coverage is None else f"{coverage:.1%}",
        accuracy,
        next_policy,
    )
    return RoundResult(
        round_idx=k,
        policy=next_policy,
        ppm=next_ppm,
        trained_policy=policy_ref is not None,
        trained_ppm=ppm_ref is not None,
        problems=problems.uri,
        trees=[r.uri for r in trees],
        aggregate=agg.uri,
        sft=sft.uri,
        pairs=pairs.uri,
        report=report.uri,
        evaluation=eval_ref.uri if eval_ref is not None else None,
        accuracy=accuracy,
        coverage=coverage,
        shards=len(shards),
        failed_shards=failures,
        mlflow_run_id=run_id or None,
        artifact_prefix=prefix,
        promoted=promoted,
    )


def agg_metric(ref: ArtifactRef, name: str) -> float | None:
    value = open_store().read_manifest(ref.uri).metrics.get(name)
    return float(value) if isinstance(value, int | float) else None

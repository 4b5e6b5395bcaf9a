"""Synthesis shards on any backend: the shard-level flow (the `synthesize-shard` deployment) and the fan-out.

    from flows.synthesize_shard import fan_out_shards, synthesize_shards
    done, failures = fan_out_shards(shards, policy="openai:http://127.0.0.1:8000/v1#policy", ppm=None,
                                    search={"rollouts": 16}, seed=0, round_idx=2, fanout=FanOut(backend="ray"))
    # done: {shard index: ArtifactRef of its trees}; failures: [{"shard", "shard_uri", "state", "message"}]

- `synthesize_shard_placed` (task `synthesize-shard`, run name `mcts-shard-NNNN`): one shard, through the same
  body as `tasks.synthesize.synthesize_shard` (`synthesize_shard_fn`: content-addressed, resumable, cached on its
  inputs), returning the artifact plus where it ran (`ShardPlacement`: backend, Ray node id, host, pid).
- `synthesize_shard_flow` (flow `synthesize-shard`): one shard as a flow run; the target of the `deployment`
  backend (prefect.yaml deploys it to the GPU pool). Parameters are plain JSON (the shard's artifact URI).
- `synthesize_shards` (flow `synthesize-shards`): every shard of a round on the backend that `fanout` names
  (flows/runners.py), failures collected, never raised; publishes a placement table artifact. `fan_out_shards`
  calls it and returns the `(done, failures)` pair that `flows.round.run_shards` returns, so a round switches
  backend with one call.

Shard failures are returned, not raised: the round decides what fraction it tolerates (`report_failures`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from flows.runners import FanOut, ShardBackend, ray_remote_options, ray_task_runner
from infra.storage import ArtifactRef
from tasks.common import DETERMINISTIC, ref_for, retry_on_transient, run_logger
from tasks.synthesize import synthesize_shard_fn


class ShardPlacement(BaseModel):
    """Where a shard's search ran."""

    backend: str
    node_id: str | None
    hostname: str
    pid: int


class ShardOutcome(BaseModel):
    """A finished shard: its trees artifact and where it was computed."""

    shard_id: int
    uri: str
    digest: str
    rows: int | None
    stage: str
    key: str
    placement: ShardPlacement

    @property
    def ref(self) -> ArtifactRef:
        return ArtifactRef(uri=self.uri, digest=self.digest, rows=self.rows, stage=self.stage, key=self.key)


class ShardBatch(BaseModel):
    """What `synthesize_shards` returns: outcomes by shard index and failures (each with the shard's URI)."""

    done: dict[int, ShardOutcome]
    failures: list[dict[str, Any]]


def current_placement(backend: str) -> ShardPlacement:
    """The node, host and process this code runs in (the Ray node id when inside a Ray worker)."""
    node_id = None
    if backend == "ray":
        try:
            import ray

            if ray.is_initialized():
                node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # placement is informative; never fail a shard over it
            node_id = None
    return ShardPlacement(backend=backend, node_id=node_id, hostname=socket.gethostname(), pid=os.getpid())


def shard_run_name() -> str:
    from prefect.runtime import task_run

    return f"mcts-shard-{int(task_run.parameters.get('shard_id', 0)):04d}"


@task(
    name="synthesize-shard",
    task_run_name=shard_run_name,
    cache_policy=DETERMINISTIC,
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_on_transient,
)
def synthesize_shard_placed(
    shard: ArtifactRef,
    shard_id: int,
    policy: str,
    ppm: str | None,
    search: dict[str, Any],
    seed: int,
    round_idx: int,
    backend: str = "local",
    parent_run_id: str | None = None,
) -> ShardOutcome:
    """MCTS over one shard (`tasks.synthesize.synthesize_shard_fn`) plus the record of where it ran."""
    ref = synthesize_shard_fn(shard, shard_id, policy, ppm, search, seed, round_idx, parent_run_id)
    placement = current_placement(backend)
    run_logger().info(
        "shard %04d: %s rows on %s (node %s, pid %d)",
        shard_id, ref.rows, placement.hostname, placement.node_id or "-", placement.pid,
    )  # fmt: skip
    return ShardOutcome(
        shard_id=shard_id,
        uri=ref.uri,
        digest=ref.digest,
        rows=ref.rows,
        stage=ref.stage,
        key=ref.key,
        placement=placement,
    )


def shard_flow_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"mcts-shard-{int(p.get('shard_id', 0)):04d}-r{p.get('round_idx', 'x')}"


@flow(name="synthesize-shard", flow_run_name=shard_flow_run_name)
def synthesize_shard_flow(
    shard_uri: str,
    shard_id: int,
    policy: str,
    ppm: str | None = None,
    search: dict[str, Any] | None = None,
    seed: int = 0,
    round_idx: int = 1,
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """One synthesis shard as a flow run (the `synthesize-shard` deployment, e.g. on a GPU work pool).

    Returns the `ShardOutcome` as plain JSON: a worker loads this file by path (module `synthesize_shard`), so a
    pickled model class would not resolve in the parent that reads the result as `flows.synthesize_shard`.
    """
    outcome = synthesize_shard_placed(
        ref_for(shard_uri), shard_id, policy, ppm, dict(search or {}), seed, round_idx, "deployment", parent_run_id
    )
    return outcome.model_dump(mode="json")


def _failure(i: int, shard: ArtifactRef, state: Any, message: str | None = None) -> dict[str, Any]:
    name = getattr(state, "name", None) or str(getattr(state, "type", "Failed"))
    return {
        "shard": i,
        "shard_uri": shard.uri,
        "state": name,
        "message": message or getattr(state, "message", "") or "",
    }


def _run_tasks(
    shards: Sequence[ArtifactRef], args: dict[str, Any], backend: str, timeout_s: float, concurrency: int
) -> tuple[dict[int, ShardOutcome], list[dict[str, Any]]]:
    """Submit one task per shard to the flow's task runner (threads or Ray), at most `concurrency` at once."""
    from prefect.futures import PrefectFuture, as_completed

    synth = synthesize_shard_placed.with_options(timeout_seconds=timeout_s)
    done: dict[int, ShardOutcome] = {}
    failures: list[dict[str, Any]] = []
    pending = list(range(len(shards)))
    running: dict[PrefectFuture[ShardOutcome], int] = {}
    while pending or running:
        while pending and len(running) < concurrency:
            i = pending.pop(0)
            running[synth.submit(shard=shards[i], shard_id=i, backend=backend, **args)] = i
        fut = next(iter(as_completed(list(running))))
        i = running.pop(fut)
        fut.wait()  # records the final state locally (the API's copy may lag behind)
        state = fut.state
        if state.is_completed():
            done[i] = fut.result()
        else:
            failures.append(_failure(i, shards[i], state))
    return done, sorted(failures, key=lambda f: f["shard"])


def _run_deployments(
    shards: Sequence[ArtifactRef], args: dict[str, Any], fanout: FanOut, timeout_s: float
) -> tuple[dict[int, ShardOutcome], list[dict[str, Any]]]:
    """One `synthesize-shard` flow run per shard (run_deployment, linked as subflows), `concurrency` at a time."""
    from prefect.deployments import run_deployment

    def one(i: int) -> tuple[int, ShardOutcome | None, dict[str, Any] | None]:
        params = {"shard_uri": shards[i].uri, "shard_id": i, **args}
        run: Any = run_deployment(  # a FlowRun here (sync caller)
            fanout.deployment,
            parameters=params,
            timeout=timeout_s,
            poll_interval=fanout.deployment_poll_s,
            as_subflow=True,
            flow_run_name=f"mcts-shard-{i:04d}-r{args['round_idx']}",
        )
        state = run.state
        if state is None or not state.is_final():
            return i, None, _failure(i, shards[i], state, f"flow run {run.id} not finished after {timeout_s:.0f} s")
        if not state.is_completed():
            return i, None, _failure(i, shards[i], state, f"flow run {run.id}: {state.message or state.name}")
        try:
            value = state.result()
        except Exception as exc:  # result storage not shared between parent and shard workers
            return i, None, _failure(
                i, shards[i], state, f"flow run {run.id} completed but its result cannot be read here ({exc}); "
                "parent and shard workers need shared Prefect result storage (docs/operations.md)",
            )  # fmt: skip
        return i, ShardOutcome.model_validate(value), None

    done: dict[int, ShardOutcome] = {}
    failures: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=fanout.concurrency, thread_name_prefix="shard-deploy") as pool:
        for i, outcome, failure in pool.map(one, range(len(shards))):
            if outcome is not None:
                done[i] = outcome
            if failure is not None:
                failures.append(failure)
    return done, failures


def batch_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    fanout = p.get("fanout")
    backend = fanout.get("backend") if isinstance(fanout, dict) else getattr(fanout, "backend", "local")
    return f"mcts-shards-r{p.get('round_idx', 'x')}-{backend or 'local'}"


@flow(name="synthesize-shards", flow_run_name=batch_run_name)
def synthesize_shards(
    shards: list[ArtifactRef],
    policy: str,
    ppm: str | None,
    search: dict[str, Any],
    seed: int,
    round_idx: int,
    fanout: FanOut = FanOut(),
    shard_timeout_s: float = 6 * 3600,
    parent_run_id: str | None = None,
) -> ShardBatch:
    """Every shard on `fanout.backend`; failures are collected and returned (see module docstring)."""
    args = {"policy": policy, "ppm": ppm, "search": dict(search), "seed": seed, "round_idx": round_idx}
    args["parent_run_id"] = parent_run_id
    backend: ShardBackend = fanout.backend
    if backend == "deployment":
        done, failures = _run_deployments(shards, args, fanout, shard_timeout_s)
    elif backend == "ray":
        from prefect_ray.context import remote_options

        inner = _ray_batch.with_options(task_runner=ray_task_runner(fanout.ray))
        with remote_options(**ray_remote_options(fanout.ray)):
            batch = inner(shards, args, shard_timeout_s, len(shards))
        done, failures = batch.done, batch.failures
    else:
        done, failures = _run_tasks(shards, args, "local", shard_timeout_s, fanout.concurrency)
    publish_placement(round_idx, backend, done, failures)
    return ShardBatch(done=done, failures=sorted(failures, key=lambda f: f["shard"]))


@flow(name="synthesize-shards-ray", flow_run_name="mcts-shards-on-ray")
def _ray_batch(shards: list[ArtifactRef], args: dict[str, Any], timeout_s: float, concurrency: int) -> ShardBatch:
    """The shards as tasks of this subflow, whose task runner is a RayTaskRunner (set with `with_options`)."""
    done, failures = _run_tasks(shards, args, "ray", timeout_s, max(1, concurrency))
    return ShardBatch(done=done, failures=failures)


def publish_placement(
    round_idx: int, backend: str, done: dict[int, ShardOutcome], failures: list[dict[str, Any]]
) -> None:
    """A table artifact: each shard, where it ran, its rows; failed shards with their message."""
    rows: list[dict[str, Any]] = [
        {
            "shard": i,
            "backend": o.placement.backend,
            "node": (o.placement.node_id or "")[:12],
            "host": o.placement.hostname,
            "pid": o.placement.pid,
            "rows": o.rows,
            "state": "Completed",
        }
        for i, o in sorted(done.items())
    ]
    rows += [
        {"shard": f["shard"], "backend": backend, "node": "", "host": "", "pid": None, "rows": None,
         "state": f"{f['state']}: {f['message'][:200]}"}
        for f in failures
    ]  # fmt: skip
    create_table_artifact(
        key=f"round-{round_idx}-shard-placement",
        table=sorted(rows, key=lambda r: int(r["shard"])) or [{"shard": None}],
        description=f"round {round_idx}: where each synthesis shard ran ({backend})",
    )


def fan_out_shards(
    shards: list[ArtifactRef],
    *,
    policy: str,
    ppm: str | None,
    search: dict[str, Any],
    seed: int,
    round_idx: int,
    fanout: FanOut,
    shard_timeout_s: float = 6 * 3600,
    parent_run_id: str | None = None,
) -> tuple[dict[int, ArtifactRef], list[dict[str, Any]]]:
    """`synthesize_shards` as `(done refs by shard index, failures)`: the contract of `flows.round.run_shards`."""
    batch = synthesize_shards(shards, policy, ppm, search, seed, round_idx, fanout, shard_timeout_s, parent_run_id)
    return {i: o.ref for i, o in batch.done.items()}, batch.failures

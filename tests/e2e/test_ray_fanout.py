"""Scale-out of synthesis shards: a local Ray cluster of two nodes, and flow runs of the `synthesize-shard` deployment.

Each backend runs the same two shards of the same problems with the same seed, in its own artifact store, through
`flows.synthesize_shard.synthesize_shards` (the flow a round calls with `FanOut(backend=...)`):

- local: the driver's own thread pool (the reference);
- ray: a Ray cluster started by the driver with `ray.cluster_utils.Cluster`: a head node and a second node on
  127.0.0.1, one CPU each (so one worker process each) and a 200 MB object store, shut down at the end;
- deployment: one flow run per shard on the shared stack's worker (`run_deployment`), S3 store on moto.

The checks: the shards ran where each backend says (two Ray nodes, two worker pids; worker flow-run processes),
and every shard's trees (nodes.parquet) are byte-identical to the local run and its problem table equal but for the
wall-clock column, so where a shard runs does not change the data. Each run happens in a child process (`python -m tests.e2e.test_ray_fanout`) so Ray's
global state never enters the pytest process; every process the driver starts carries a marker variable, and the
test asserts none is left afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_stack_shared as shared
from tests.e2e.test_stack_shared import ROOT, LiveStack

live_stack = shared.live_stack  # the session's stack (a fixture defined there, registered here)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHARD_SIZE = 4  # 8 problems -> 2 shards
SEARCH = {"rollouts": 3, "candidates": 2, "max_depth": 4, "extra_rollouts_if_unsolved": 0}
OBJECT_STORE = 200 * 1024 * 1024
TIMING_SUFFIXES = ("time_s", "_seconds")  # wall-clock columns: the only thing allowed to differ between runs


# --------------------------------------------------------------------------------------------------------- driver


def drive(backend: str, train: Path) -> dict[str, Any]:
    """Ingest + shard + `synthesize_shards` on `backend`; return placements and file hashes per shard."""
    import polars as pl
    from prefect import flow

    from flows.runners import FanOut, RayOptions
    from flows.synthesize_shard import synthesize_shards
    from infra.storage import open_store
    from tasks.shard import ingest_problems, shard_problems

    cluster = None
    fanout = FanOut(backend="local")
    if backend == "ray":
        from ray.cluster_utils import Cluster

        node: dict[str, Any] = {"num_cpus": 1, "object_store_memory": OBJECT_STORE}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        fanout = FanOut(backend="ray", ray=RayOptions(address=cluster.address))
    elif backend == "deployment":
        fanout = FanOut(backend="deployment", concurrency=2, deployment_poll_s=1.0)

    @flow(name="fanout-check", flow_run_name=f"fanout-check-{backend}")
    def check() -> Any:
        problems = ingest_problems(str(train), None)
        shards = shard_problems(problems, SHARD_SIZE, 1, SEARCH["rollouts"], None, 0)
        policy = f"fake:oracle?answers={train}&p_correct=0.5"
        return synthesize_shards(shards, policy, None, SEARCH, 7, 1, fanout, 600.0)

    t0 = time.monotonic()
    try:
        batch: Any = check()
    finally:
        if cluster is not None:
            cluster.shutdown()
    store = open_store()

    def fingerprint(uri: str) -> dict[str, str]:
        """sha256 of every file; for the problem table also a hash of its content without wall-clock columns."""
        files = {name: str(meta["sha256"]) for name, meta in store.read_manifest(uri).files.items()}
        table = pl.read_parquet(store.get_artifact(uri) / "problems.parquet")
        timing = [c for c in table.columns if c.endswith(TIMING_SUFFIXES)]
        files["problems-without-timing"] = hashlib.sha256(table.drop(timing).write_csv().encode()).hexdigest()
        return files

    return {
        "driver_pid": os.getpid(),
        "seconds": time.monotonic() - t0,
        "failures": batch.failures,
        "shards": {
            str(i): {
                "digest": o.digest,
                "uri": o.uri,
                "placement": o.placement.model_dump(),
                "files": fingerprint(o.uri),
            }
            for i, o in sorted(batch.done.items())
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=("local", "ray", "deployment"), required=True)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.write_text(json.dumps(drive(args.backend, args.train), indent=2))


# --------------------------------------------------------------------------------------------------------- tests


def run_driver(live: LiveStack, backend: str, workdir: Path, *, own_store: bool) -> dict[str, Any]:
    """Run the driver in a child process with the stack's client environment (and its own file store if asked)."""
    from infra.stack import MARKER_VAR, processes_with_marker

    env = dict(live.env)
    if own_store:
        env.update(
            RSTAR_HOME=str(workdir / "home"),
            RSTAR_ARTIFACT_URL=(workdir / "artifacts").as_uri(),
            RSTAR_MLFLOW_TRACKING_URI="off",
        )
        env.pop("RSTAR_S3_ENDPOINT_URL", None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # no phoning home from the test cluster
    marker = f"fanout-{uuid.uuid4().hex[:8]}"
    env[MARKER_VAR] = f"{marker}:driver"  # inherited by every process the driver starts (Ray nodes included)
    out = workdir / f"{backend}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_ray_fanout", "--backend", backend, "--train",
         str(live.world["train"]), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{backend} driver failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    deadline = time.monotonic() + 30
    while processes_with_marker(f"{marker}:") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with_marker(f"{marker}:") == [], f"{backend}: processes left behind"
    result: dict[str, Any] = json.loads(out.read_text())
    live.timings[f"fanout_{backend}_s"] = float(result["seconds"])
    return result


@pytest.fixture(scope="module")
def local_run(live_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_driver(live_stack, "local", tmp_path_factory.mktemp("fanout-local"), own_store=True)


def assert_same_data(run: dict[str, Any], reference: dict[str, Any]) -> None:
    assert run["failures"] == []
    assert sorted(run["shards"]) == sorted(reference["shards"]) == ["0", "1"]
    for i, shard in run["shards"].items():
        ref = reference["shards"][i]
        assert shard["digest"] == ref["digest"]
        files, ref_files = shard["files"], ref["files"]
        assert files["nodes.parquet"] == ref_files["nodes.parquet"], f"shard {i}: trees differ from the local run"
        assert files["problems-without-timing"] == ref_files["problems-without-timing"], f"shard {i}: problems differ"


def test_local_backend_runs_every_shard_in_the_driver(local_run: dict[str, Any]) -> None:
    assert local_run["failures"] == []
    assert {s["placement"]["pid"] for s in local_run["shards"].values()} == {local_run["driver_pid"]}
    assert {s["placement"]["backend"] for s in local_run["shards"].values()} == {"local"}


def test_ray_spreads_shards_over_two_nodes_and_matches_the_local_run(
    live_stack: LiveStack, local_run: dict[str, Any], tmp_path: Path
) -> None:
    ray_run = run_driver(live_stack, "ray", tmp_path, own_store=True)
    assert_same_data(ray_run, local_run)
    placements = [s["placement"] for s in ray_run["shards"].values()]
    assert {p["backend"] for p in placements} == {"ray"}
    assert len({p["node_id"] for p in placements}) == 2, placements  # one shard per node
    pids = {p["pid"] for p in placements}
    assert len(pids) == 2 and ray_run["driver_pid"] not in pids  # two Ray worker processes, not the driver
    assert ray_run["shards"]["0"]["uri"] != local_run["shards"]["0"]["uri"]  # really another store


def test_deployment_backend_runs_each_shard_as_a_flow_run_on_the_worker(
    live_stack: LiveStack, local_run: dict[str, Any], tmp_path: Path
) -> None:
    run = run_driver(live_stack, "deployment", tmp_path, own_store=False)
    assert_same_data(run, local_run)
    placements = [s["placement"] for s in run["shards"].values()]
    assert {p["backend"] for p in placements} == {"deployment"}
    assert run["driver_pid"] not in {p["pid"] for p in placements}
    assert all(s["uri"].startswith("s3://rstar-artifacts/evolve/rounds/1/trees/") for s in run["shards"].values())
    shard_runs = live_stack.request("POST", "/flow_runs/filter", {"flow_runs": {"name": {"like_": "mcts-shard-"}}})
    finished = {r["name"]: r["state"]["type"] for r in shard_runs}
    assert finished.get("mcts-shard-0000-r1") == finished.get("mcts-shard-0001-r1") == "COMPLETED", finished


if __name__ == "__main__":
    main()

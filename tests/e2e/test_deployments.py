"""Deployments on the real local stack: registration, a round triggered as the UI does, and schedules.

The stack (Prefect server + process worker, MLflow server, moto S3) is started once per session by
`tests/e2e/test_stack_shared.py` and the deployments are registered with `rstar deploy`. The round test creates a
flow run of `evolution-round` with `POST /deployments/{id}/create_flow_run`, the request the UI's "Run" form
sends; the stack's worker runs it; the test then checks the three places its results live: the Prefect flow run,
the MLflow runs and registered models, and the artifacts in the S3 endpoint.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import test_stack_shared as shared
from tests.e2e.test_stack_shared import EVAL_FAST, ROOT, LiveStack, utc_in

live_stack = shared.live_stack  # the session's stack (a fixture defined there, registered here)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOYMENTS = {
    ("evolution-round", "evolution-round"): "flows/round.py:evolution_round",
    ("self-evolution", "self-evolution"): "flows/self_evolution.py:self_evolution",
    ("evaluate", "evaluate"): "flows/evaluate.py:evaluate",
    ("synthesize-shard", "synthesize-shard"): "flows/synthesize_shard.py:synthesize_shard_flow",
}
ROUND_STAGES = {"shards", "trees", "aggregate", "sft", "pairs", "report", "policy", "ppm", "eval"}


def test_deploy_registers_every_deployment_with_an_enforced_typed_schema(live_stack: LiveStack) -> None:
    for (flow_name, name), entrypoint in DEPLOYMENTS.items():
        dep = live_stack.deployment(flow_name, name)
        assert dep["entrypoint"] == entrypoint
        assert dep["enforce_parameter_schema"] is True
        assert dep["work_pool_name"] == "rstar-process"  # the local stack maps the GPU pool onto its one worker
        assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    schema = live_stack.deployment("evolution-round", "evolution-round")["parameter_openapi_schema"]
    assert schema["required"] == ["params"]
    round_params = schema["definitions"]["RoundParams"]
    assert {"problems", "policy"} <= set(round_params["required"])
    assert round_params["properties"]["shard_size"]["type"] == "integer"  # a typed form field, not free text


def test_the_nightly_round_schedule_ships_paused(live_stack: LiveStack) -> None:
    schedules = live_stack.deployment("evolution-round", "evolution-round")["schedules"]
    nightly = [s for s in schedules if s.get("slug") == "nightly-round"]
    assert len(nightly) == 1
    assert nightly[0]["active"] is False
    assert nightly[0]["schedule"]["cron"] == "0 2 * * *"
    for flow_name, name in (("self-evolution", "self-evolution"), ("evaluate", "evaluate")):
        assert live_stack.deployment(flow_name, name)["schedules"] == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"policy": None}, "'policy' is a required property"),
        ({"shard_size": "many"}, "'many' is not of type 'integer'"),
        ({"search": {"rollouts": 0}}, "minimum of 1"),
    ],
    ids=["missing-policy", "wrong-type", "out-of-range"],
)
def test_a_run_with_invalid_parameters_is_rejected_before_any_worker_sees_it(
    live_stack: LiveStack, change: dict[str, Any], expected: str
) -> None:
    dep = live_stack.deployment("evolution-round", "evolution-round")
    bad = {k: v for k, v in {**live_stack.round_params(), **change}.items() if v is not None}
    before = len(deployment_runs(live_stack, dep["id"]))
    resp = live_stack.send(
        "POST",
        f"/deployments/{dep['id']}/create_flow_run",
        {"parameters": {"params": bad}, "state": {"type": "SCHEDULED"}},
    )
    assert resp.status_code == 409, resp.text
    assert expected in resp.json()["detail"]
    assert len(deployment_runs(live_stack, dep["id"])) == before


def test_a_round_triggered_through_the_api_is_run_by_the_worker_and_lands_everywhere(
    live_stack: LiveStack,
) -> None:
    from mlflow.tracking import MlflowClient

    run = live_stack.deployed_round()
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{live_stack.logs()}"
    assert run["name"] == "round-1"
    assert run["work_pool_name"] == "rstar-process"
    assert run["infrastructure_pid"], "the flow run was not started by a worker"

    # MLflow: the round's parent run and its nested stage runs, tagged with this flow run.
    client = MlflowClient(tracking_uri=live_stack.mlflow)
    exp = client.get_experiment_by_name("rstar-evolve")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{run['id']}'")
    by_name = {r.info.run_name: r for r in runs}
    assert "round-1" in by_name, sorted(by_name)
    parent = by_name["round-1"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    nested_names = {r.info.run_name for r in nested}
    assert {"train-policy-r1", "train-ppm-r1", "mcts-shard-0000", "mcts-shard-0001"} <= nested_names, nested_names
    assert all(r.info.status == "FINISHED" for r in runs)
    round_run_ids = {r.info.run_id for r in runs}

    # Registered models: this round's policy and PPM, aliased, pointing at artifacts in the S3 endpoint.
    s3 = s3_client(live_stack)
    for model in ("rstar-policy", "rstar-ppm"):
        version = client.get_model_version_by_alias(model, "candidate")
        assert version.run_id in round_run_ids
        assert client.get_model_version_by_alias(model, "champion").version == version.version  # first round
        uri = version.tags["rstar.artifact_uri"]
        stage = "policy" if model == "rstar-policy" else "ppm"
        assert uri.startswith(f"s3://rstar-artifacts/evolve/rounds/1/{stage}/"), uri
        key = uri.removeprefix("s3://rstar-artifacts/") + "/manifest.json"
        assert s3.head_object(Bucket="rstar-artifacts", Key=key)["ContentLength"] > 0

    # S3: every stage of the round committed (manifest written last) under rounds/1/<stage>/<digest>/.
    keys = list_keys(s3, "evolve/rounds/1/")
    stages = {k.split("/")[3] for k in keys if k.endswith("/manifest.json")}
    assert stages >= ROUND_STAGES, stages
    assert any(k.endswith("/nodes.parquet") for k in keys)


def test_an_interval_schedule_creates_and_runs_flow_runs_without_a_trigger(live_stack: LiveStack) -> None:
    dep = live_stack.deployment("evaluate", "evaluate")
    heldout = live_stack.world["heldout"]
    params = {
        "policy": f"fake:oracle?answers={heldout}",
        "options": {"benchmarks": [f"world={heldout}"], "limit": 1, "extra": EVAL_FAST},
    }
    assert deployment_runs(live_stack, dep["id"]) == []  # nobody ever triggered `evaluate`
    # First run ~20 s from now (the stack's scheduler looks every 5 s); the next would come 5 minutes later.
    created = live_stack.request(
        "POST",
        f"/deployments/{dep['id']}/schedules",
        [
            {
                "schedule": {"interval": 300, "anchor_date": utc_in(20), "timezone": "UTC"},
                "active": True,
                "parameters": params,
            }
        ],
    )
    try:
        run = wait_for_scheduled_run(live_stack, dep["id"], timeout=240)
    finally:
        live_stack.request("DELETE", f"/deployments/{dep['id']}/schedules/{created[0]['id']}")
    assert run["auto_scheduled"] is True
    assert run["parameters"]["policy"] == params["policy"]
    final = live_stack.wait_flow_run(run["id"], timeout=240)
    assert final["state"]["type"] == "COMPLETED", f"{final['state']}\n{live_stack.logs()}"
    assert final["infrastructure_pid"]


# --------------------------------------------------------------------------------------------------------- helpers


def deployment_runs(live: LiveStack, deployment_id: str) -> list[dict[str, Any]]:
    return list(live.request("POST", "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}}))


def wait_for_scheduled_run(live: LiveStack, deployment_id: str, timeout: float) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in deployment_runs(live, deployment_id) if r.get("auto_scheduled")]
        started = [r for r in runs if (r.get("state") or {}).get("type") not in (None, "SCHEDULED")]
        if started:
            return started[0]
        time.sleep(1.0)
    raise AssertionError(f"the schedule produced no started run in {timeout:.0f} s\n{live.logs('prefect')}")


def s3_client(live: LiveStack) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=live.s3,
        aws_access_key_id=live.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=live.env["AWS_SECRET_ACCESS_KEY"],
        region_name=live.env["AWS_DEFAULT_REGION"],
    )


def list_keys(s3: Any, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="rstar-artifacts", Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys

"""Tracking and lineage against a real `mlflow server` (SQLite backend) and a real S3 endpoint (moto), both started
by the test session.

One fake round is tracked once per module: a problem set, search trees, PPM pairs and SFT data stored as artifacts
with manifests in S3; a parent run `round-1` with nested stage runs that log their inputs; a PPM registered from its
artifact URI and a policy from a local folder. The tests then check what MLflow holds, the promotion gate, and that
`rstar lineage` walks from the registered PPM back to the pairs, the trees and the problem set.
"""

from __future__ import annotations

import contextvars
import io
import json
import math
import sys
import threading
import types
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from infra.lineage import LineageError, lineage
from infra.settings import Settings, get_settings
from infra.storage import ArtifactRef, Manifest, artifact_key, content_digest, open_store
from infra.tracking import NullTracker, Tracker, get_tracker

pytestmark = pytest.mark.e2e


@dataclass
class World:
    settings: Settings
    tracker: Tracker
    refs: dict[str, ArtifactRef]
    run_ids: dict[str, str]
    ppm_name: str
    policy_name: str
    ppm_version: str
    policy_version: str
    policy_dir: Path


def put(
    store: Any, tmp: Path, stage: str, round_idx: int | None, tables: dict[str, pl.DataFrame | bytes], **kw: Any
) -> ArtifactRef:
    folder = tmp / f"build-{stage}"
    folder.mkdir(parents=True)
    for name, table in tables.items():
        if isinstance(table, pl.DataFrame):
            table.write_parquet(folder / name)
        else:
            (folder / name).write_bytes(table)
    digest = content_digest(stage, kw.get("parents", []), sorted(tables))
    key = artifact_key(round_idx, stage, digest)
    return store.put_artifact(key, folder, Manifest.create(key=key, digest=digest, stage=stage, round=round_idx, **kw))


@pytest.fixture(scope="module")
def world(
    mlflow_server: str, moto_endpoint: str, aws_env_session: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> World:
    import boto3

    tmp = tmp_path_factory.mktemp("world")
    bucket = f"lineage-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    settings = Settings(
        home=tmp / "home",
        artifact_url=f"s3://{bucket}/evolve",
        s3_endpoint_url=moto_endpoint,
        mlflow_tracking_uri=mlflow_server,
        mlflow_experiment=f"e2e-{uuid.uuid4().hex[:8]}",
    )
    store = open_store(settings)
    problems = put(
        store,
        tmp,
        "problems",
        None,
        {"problems.parquet": pl.DataFrame({"problem_id": ["p1", "p2", "p3"], "gold": ["1", "2", "3"]})},
        rows=3,
    )
    trees = put(
        store,
        tmp,
        "trees",
        1,
        {"nodes.parquet": pl.DataFrame({"problem_id": ["p1", "p1"], "q": [1.0, -1.0]}), "problems.parquet": b"x"},
        parents=[problems.as_parent("problems")],
        models={"policy": "fake:scripted?seed=1"},
        rows=2,
    )
    pairs = put(
        store,
        tmp,
        "pairs",
        1,
        {"pairs.parquet": pl.DataFrame({"chosen": ["a"], "rejected": ["b"]})},
        parents=[trees.as_parent("trees")],
        rows=1,
    )
    sft = put(
        store,
        tmp,
        "sft",
        1,
        {"sft.parquet": pl.DataFrame({"text": ["s1", "s2"]})},
        parents=[trees.as_parent("trees")],
        rows=2,
    )
    ppm = put(
        store,
        tmp,
        "train-ppm",
        1,
        {"weights.bin": b"\x01\x02ppm", "config.json": b"{}"},
        parents=[pairs.as_parent("pairs")],
        models={"base": "tiny:1"},
    )
    policy_dir = tmp / "policy-model"
    policy_dir.mkdir()
    (policy_dir / "model.safetensors").write_bytes(b"policy-weights")

    tracker = Tracker(settings.mlflow_tracking_uri, settings.mlflow_experiment, settings=settings)
    ids: dict[str, str] = {}
    ppm_name, policy_name = f"rstar-ppm-{uuid.uuid4().hex[:6]}", f"rstar-policy-{uuid.uuid4().hex[:6]}"
    plots = tmp / "plots"
    plots.mkdir()
    (plots / "q_hist.png").write_bytes(b"\x89PNG fake")

    with tracker.round_run(1, params={"search": {"rollouts": 4}, "seed": 7}, tags={"note": "e2e"}) as round_id:
        ids["round"] = round_id
        with tracker.stage_run("synthesize", parent_run_id=round_id) as rid:
            ids["synthesize"] = rid
            local = store.get_artifact(problems.uri)
            tracker.log_dataset(
                local / "problems.parquet", f"{problems.uri}/problems.parquet", problems.digest, "problems", "problems"
            )
            tracker.log_metrics({"solve_rate": 0.5, "coverage": {"level1": 1.0}, "label": "not a number"})
        with tracker.stage_run("build-data") as rid:  # no parent given: nests under the active round run
            ids["build-data"] = rid
            tracker.log_dataset(store.get_artifact(trees.uri), trees.uri, trees.digest, "trees", "trees")
        with tracker.stage_run("train-ppm", parent_run_id=round_id) as rid:
            ids["train-ppm"] = rid
            local = store.get_artifact(pairs.uri)
            tracker.log_dataset(local / "pairs.parquet", f"{pairs.uri}/pairs.parquet", pairs.digest, "pairs", "pairs")
            tracker.log_metrics({"loss": 0.7}, step=0)
            tracker.log_metrics({"loss": 0.4}, step=1)
            ppm_version = tracker.register_model(ppm_name, ppm.uri, tags={"round": 1})
        with tracker.stage_run("train-policy") as rid:
            ids["train-policy"] = rid
            tracker.log_dataset(
                store.get_artifact(sft.uri) / "sft.parquet", f"{sft.uri}/sft.parquet", sft.digest, "sft", "sft"
            )
            policy_version = tracker.register_model(policy_name, policy_dir, tags={"round": 1})
        tracker.log_artifacts(plots, "plots")
        with pytest.raises(RuntimeError, match="evaluation blew up"), tracker.stage_run("evaluate") as rid:
            ids["evaluate"] = rid
            raise RuntimeError("evaluation blew up")
        assert tracker.active_run_id() == round_id
    assert tracker.active_run_id() is None
    return World(
        settings=settings,
        tracker=tracker,
        refs={"problems": problems, "trees": trees, "pairs": pairs, "sft": sft, "ppm": ppm},
        run_ids=ids,
        ppm_name=ppm_name,
        policy_name=policy_name,
        ppm_version=ppm_version,
        policy_version=policy_version,
        policy_dir=policy_dir,
    )


def test_round_parent_run_and_nested_stage_runs(world: World) -> None:
    client = world.tracker.client
    parent = client.get_run(world.run_ids["round"])
    assert parent.info.run_name == "round-1" and parent.info.status == "FINISHED"
    assert parent.data.params["search.rollouts"] == "4" and parent.data.params["seed"] == "7"
    assert parent.data.tags["rstar.round"] == "1" and parent.data.tags["note"] == "e2e"
    assert "rstar.git_commit" in parent.data.tags  # the checkout is a git repository
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/q_hist.png"]

    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    status = {r.info.run_name: r.info.status for r in children}
    assert status == {
        "synthesize": "FINISHED",
        "build-data": "FINISHED",
        "train-ppm": "FINISHED",
        "train-policy": "FINISHED",
        "evaluate": "FAILED",
    }
    syn = client.get_run(world.run_ids["synthesize"])
    assert syn.data.metrics == {"solve_rate": 0.5, "coverage.level1": 1.0}  # non-numeric values are skipped
    assert syn.data.tags["rstar.stage"] == "synthesize"
    losses = client.get_metric_history(world.run_ids["train-ppm"], "loss")
    assert [(m.step, m.value) for m in losses] == [(0, 0.7), (1, 0.4)]


def test_each_stage_logs_its_inputs_with_source_and_digest(world: World) -> None:
    client = world.tracker.client
    refs = world.refs
    expected = {
        "synthesize": (f"{refs['problems'].uri}/problems.parquet", refs["problems"].digest, "problems", 3),
        "build-data": (refs["trees"].uri, refs["trees"].digest, "trees", 2),  # a folder: its file listing
        "train-ppm": (f"{refs['pairs'].uri}/pairs.parquet", refs["pairs"].digest, "pairs", 1),
        "train-policy": (f"{refs['sft'].uri}/sft.parquet", refs["sft"].digest, "sft", 2),
    }
    for stage, (source, digest, context, rows) in expected.items():
        inputs = client.get_run(world.run_ids[stage]).inputs.dataset_inputs
        assert len(inputs) == 1, stage
        ds = inputs[0].dataset
        tags = {t.key: t.value for t in inputs[0].tags}
        assert json.loads(ds.source)["uri"] == source and ds.source_type == "s3", stage
        assert ds.digest == digest and tags["rstar.digest"] == digest, stage
        assert tags["mlflow.data.context"] == context, stage
        assert json.loads(ds.profile)["num_rows"] == rows, stage
        assert tags.get("rstar.rows") == (None if stage == "build-data" else str(rows)), stage  # 2 tables: no count


def test_big_tables_are_profiled_from_a_sample(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import infra.tracking as tracking

    monkeypatch.setattr(tracking, "_FULL_READ_BYTES", 1)  # every table counts as big
    monkeypatch.setattr(tracking, "_SAMPLE_ROWS", 5)
    table = tmp_path / "nodes.parquet"
    pl.DataFrame({"q": [float(i) for i in range(50)]}).write_parquet(table)
    with world.tracker.stage_run("sampled") as rid:
        world.tracker.log_dataset(table, "s3://b/rounds/1/trees/x/nodes.parquet", "x", "trees", "trees")
    [inp] = world.tracker.client.get_run(rid).inputs.dataset_inputs
    assert json.loads(inp.dataset.profile)["num_rows"] == 5
    assert {t.key: t.value for t in inp.tags}["rstar.rows"] == "50"


def test_models_are_registered_with_aliases(world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.settings.mlflow_tracking_uri)  # models:/ resolves via the registry
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", world.settings.mlflow_tracking_uri)
    client = world.tracker.client
    ppm = client.get_model_version_by_alias(world.ppm_name, "candidate")
    assert str(ppm.version) == world.ppm_version == "1"
    assert ppm.run_id == world.run_ids["train-ppm"]
    assert ppm.tags["rstar.artifact_uri"] == world.refs["ppm"].uri
    assert ppm.tags["rstar.digest"] == world.refs["ppm"].digest and ppm.tags["round"] == "1"
    assert ppm.source == f"runs:/{ppm.run_id}/models/{world.ppm_name}"
    out = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{world.ppm_name}/1", dst_path=str(tmp_path)))
    assert (out / "weights.bin").read_bytes() == b"\x01\x02ppm"  # the registry holds a real copy of the folder

    policy = client.get_model_version_by_alias(world.policy_name, "candidate")
    assert str(policy.version) == world.policy_version and policy.run_id == world.run_ids["train-policy"]
    assert policy.source == f"runs:/{policy.run_id}/models/{world.policy_name}"
    files = [a.path for a in client.list_artifacts(policy.run_id, f"models/{world.policy_name}")]
    assert files == [f"models/{world.policy_name}/model.safetensors"]


def test_registering_by_uri_without_copy_and_outside_a_run(world: World) -> None:
    name = f"rstar-nocopy-{uuid.uuid4().hex[:6]}"
    version = world.tracker.register_model(name, world.refs["ppm"].uri, tags={"round": 1}, copy=False)
    mv = world.tracker.client.get_model_version(name, version)
    assert mv.source == world.refs["ppm"].uri  # registered where it lives
    run = world.tracker.client.get_run(mv.run_id)  # outside any run a register-<name> run was opened for it
    assert run.info.run_name == f"register-{name}" and run.info.status == "FINISHED"


def test_promotion_gate_moves_champion_only_without_regression(world: World) -> None:
    tracker = world.tracker
    name = f"rstar-gate-{uuid.uuid4().hex[:6]}"

    def champion() -> str | None:
        mv = tracker.model_version_by_alias(name, "champion")
        return None if mv is None else str(mv.version)

    with tracker.stage_run("gate") as rid:  # runs:/ sources are registered as they are (no upload): fast
        versions = [tracker.register_model(name, f"runs:/{rid}/model-{i}", tags={"i": i}) for i in range(4)]
    assert champion() is None
    assert tracker.promote(name, versions[0], 0.50) and champion() == versions[0]  # first champion
    assert not tracker.promote(name, versions[1], 0.40) and champion() == versions[0]  # regression: kept
    mv = tracker.client.get_model_version(name, versions[1])
    assert mv.tags["rstar.promotion"].startswith("rejected") and mv.tags["rstar.eval_metric"] == "0.4"
    assert tracker.promote(name, versions[2], 0.50) and champion() == versions[2]  # equal is no regression
    assert not tracker.promote(name, versions[3], math.nan) and champion() == versions[2]
    candidate = tracker.model_version_by_alias(name, "candidate")
    assert candidate is not None and str(candidate.version) == versions[3]  # the newest registration

    lower = f"rstar-gate-loss-{uuid.uuid4().hex[:6]}"
    with tracker.stage_run("gate-loss") as rid:
        ws = [tracker.register_model(lower, f"runs:/{rid}/model", tags={}) for _ in range(3)]
    assert tracker.promote(lower, ws[0], 1.0, higher_is_better=False, metric_name="loss")
    assert not tracker.promote(lower, ws[1], 1.2, higher_is_better=False, metric_name="loss")
    assert tracker.promote(lower, ws[2], 0.9, higher_is_better=False, metric_name="loss")
    best = tracker.model_version_by_alias(lower, "champion")
    assert best is not None and str(best.version) == ws[2]


def test_lineage_walks_from_the_ppm_back_to_the_problem_set(world: World) -> None:
    refs = world.refs
    graph = lineage(f"models:/{world.ppm_name}/{world.ppm_version}", settings=world.settings)
    root = graph.nodes[graph.root]
    assert root.kind == "model_version" and root.attrs["aliases"] == ["candidate"]
    [(role, run)] = [(r, n) for r, n in graph.parents(graph.root) if n.kind == "run"]
    assert (
        role == "registered by" and run.attrs["run_name"] == "train-ppm" and run.attrs["parent_run_name"] == "round-1"
    )

    by_stage = {n.attrs["stage"]: n for n in graph.find(kind="artifact")}
    assert set(by_stage) == {"train-ppm", "pairs", "trees", "problems"}
    for stage in ("pairs", "trees", "problems"):
        assert by_stage[stage].id == refs[stage].uri and by_stage[stage].attrs["digest"] == refs[stage].digest
    # run --input--> pairs --trees--> trees --problems--> problem set (which has no parents: the end of the walk)
    assert ("input pairs", by_stage["pairs"]) in graph.parents(run.id)
    assert ("trees", by_stage["trees"]) in graph.parents(by_stage["pairs"].id)
    assert ("problems", by_stage["problems"]) in graph.parents(by_stage["trees"].id)
    assert graph.parents(by_stage["problems"].id) == []
    assert {n.id for n in graph.ancestors(graph.root)} >= {refs[s].uri for s in ("pairs", "trees", "problems")}
    assert ("model policy", graph.nodes["fake:scripted?seed=1"]) in graph.parents(by_stage["trees"].id)
    assert not any("digest_mismatch" in n.attrs for n in graph.nodes.values())

    text = graph.render()
    assert text.splitlines()[0].startswith(f"{world.ppm_name} v1")
    for stage in ("train-ppm", "pairs", "trees", "problems"):
        assert f"{stage} " in text

    by_alias = lineage(f"models:/{world.ppm_name}@candidate", settings=world.settings)
    assert by_alias.root == graph.root and set(by_alias.nodes) == set(graph.nodes)


def test_lineage_cli_prints_json_and_tree(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.cli import main

    s = world.settings
    monkeypatch.setenv("RSTAR_HOME", str(s.home))
    monkeypatch.setenv("RSTAR_ARTIFACT_URL", s.artifact_url)
    monkeypatch.setenv("RSTAR_S3_ENDPOINT_URL", str(s.s3_endpoint_url))
    monkeypatch.setenv("RSTAR_MLFLOW_TRACKING_URI", s.mlflow_tracking_uri)
    get_settings.cache_clear()
    try:
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["lineage", f"models:/{world.policy_name}@candidate", "--json"]) == 0
        data = json.loads(out.getvalue())
        digests = {n["attrs"].get("digest") for n in data["nodes"]}
        assert {world.refs[s].digest for s in ("sft", "trees", "problems")} <= digests
        assert data["root"] == f"models:/{world.policy_name}/{world.policy_version}"

        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["lineage", f"models:/{world.ppm_name}/1"]) == 0
        assert "└── " in out.getvalue() and "problems" in out.getvalue()

        err = io.StringIO()
        with redirect_stderr(err):
            assert main(["lineage", "models:/no-such-model/1"]) == 1
        assert "not found in the registry" in err.getvalue()
    finally:
        get_settings.cache_clear()


def test_lineage_reports_unreadable_artifacts_instead_of_failing(world: World, tmp_path: Path) -> None:
    tracker = world.tracker
    name = f"rstar-orphan-{uuid.uuid4().hex[:6]}"
    with tracker.stage_run("orphan"):
        tracker.log_dataset(
            world.policy_dir.parent / "build-sft" / "sft.parquet", "s3://nowhere-bucket/x/y.parquet", "d0", "x", "x"
        )
        version = tracker.register_model(name, world.policy_dir, tags={})
    graph = lineage(f"models:/{name}/{version}", settings=world.settings)
    [missing] = graph.find(kind="missing")
    assert missing.id == "s3://nowhere-bucket/x/y.parquet" and "nowhere-bucket" in missing.attrs["error"]
    with pytest.raises(LineageError, match="not a model URI"):
        lineage("runs:/abc/model", settings=world.settings)


def test_stage_runs_in_task_threads_nest_under_the_round(world: World) -> None:
    """Prefect runs tasks in threads with a copy of the flow's context: the round run id travels with it."""
    tracker = world.tracker
    seen: dict[str, str] = {}
    with tracker.round_run(2, params={}) as round_id:
        ctx = contextvars.copy_context()

        def task() -> None:
            with tracker.stage_run("threaded") as rid:
                seen["run"] = rid

        thread = threading.Thread(target=ctx.run, args=(task,))
        thread.start()
        thread.join()
    tags = tracker.client.get_run(seen["run"]).data.tags
    assert tags["mlflow.parentRunId"] == round_id


def test_runs_carry_the_prefect_flow_run_id(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a Prefect run, `prefect.runtime` names the flow run; stand-in modules avoid importing prefect here."""
    flow_run = types.SimpleNamespace(
        get_id=lambda: "0f0e0d0c-flow-run", get_name=lambda: "round-3-run", get_flow_name=lambda: "evolution-round"
    )
    task_run = types.SimpleNamespace(get_id=lambda: None, get_name=lambda: None)
    runtime = types.ModuleType("prefect.runtime")
    runtime.flow_run = flow_run  # type: ignore[attr-defined]
    runtime.task_run = task_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "prefect", sys.modules.get("prefect") or types.ModuleType("prefect"))
    monkeypatch.setitem(sys.modules, "prefect.runtime", runtime)
    with world.tracker.round_run(3, params={}) as rid:
        pass
    tags = world.tracker.client.get_run(rid).data.tags
    assert tags["prefect.flow_run_id"] == "0f0e0d0c-flow-run" and tags["prefect.flow_run_name"] == "round-3-run"
    assert tags["prefect.flow_name"] == "evolution-round" and "prefect.task_run_id" not in tags


def test_tracking_off_is_a_no_op(tmp_path: Path) -> None:
    tracker = get_tracker(Settings(home=tmp_path, mlflow_tracking_uri="off"))
    assert isinstance(tracker, NullTracker) and not tracker.enabled
    with tracker.round_run(1, {"a": 1}) as rid, tracker.stage_run("x", rid) as sid:
        tracker.log_metrics({"m": 1.0})
        tracker.log_dataset(tmp_path / "none.parquet", "s3://b/k", "d", "c", "n")
        assert tracker.register_model("m", tmp_path, tags={}) == ""
    assert (rid, sid) == ("", "")
    assert tracker.promote("m", "1", 0.1) and not tracker.promote("m", "1", math.nan)
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_embedded_defaults_track_and_trace_without_any_server(tmp_path: Path) -> None:
    """The embedded default: MLflow in SQLite under RSTAR_HOME and a local artifact store, lineage over file:// URIs."""
    settings = Settings(home=tmp_path / "home")
    store = open_store(settings)
    problems = put(store, tmp_path, "problems", None, {"problems.parquet": pl.DataFrame({"id": ["a", "b"]})}, rows=2)
    pairs = put(
        store,
        tmp_path,
        "pairs",
        1,
        {"pairs.parquet": pl.DataFrame({"chosen": ["x"]})},
        parents=[problems.as_parent("problems")],
        rows=1,
    )
    model = put(store, tmp_path, "train-ppm", 1, {"w.bin": b"w"}, parents=[pairs.as_parent("pairs")])
    tracker = get_tracker(settings)
    with tracker.round_run(1, params={"k": 1}) as rid, tracker.stage_run("train-ppm") as sid:
        local = store.get_artifact(pairs.uri) / "pairs.parquet"
        tracker.log_dataset(local, f"{pairs.uri}/pairs.parquet", pairs.digest, "pairs", "pairs")
        version = tracker.register_model("rstar-ppm", model.uri, tags={"round": 1})
    assert (tmp_path / "home" / "mlflow.db").is_file()
    candidate = tracker.model_version_by_alias("rstar-ppm", "candidate")
    assert candidate is not None and str(candidate.version) == version
    assert tracker.client.get_run(sid).data.tags["mlflow.parentRunId"] == rid
    stored = list((tmp_path / "home" / "mlartifacts").rglob("w.bin"))  # run artifacts under home, not ./mlruns
    assert len(stored) == 1 and stored[0].read_bytes() == b"w"

    graph = lineage("models:/rstar-ppm@candidate", settings=settings)
    stages = {n.attrs["stage"]: n.id for n in graph.find(kind="artifact")}
    assert stages == {"train-ppm": model.uri, "pairs": pairs.uri, "problems": problems.uri}
    assert all(uri.startswith("file://") for uri in stages.values())

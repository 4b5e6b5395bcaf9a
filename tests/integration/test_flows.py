"""The round DAG under a real (test) Prefect server: artifacts, caching, failed shards, resume after a kill, and
multi-round wiring. Fake policies generate the trees (`fake:oracle` with the gold answers, so some rollouts are
right and some wrong); `tiny:0` is what gets trained, so training takes seconds.

A spy wraps `tasks.synthesize.run_search` (the body of the synthesis task) to count which shards really searched
and to make chosen shards fail; Prefect's own records (task-run states) are checked as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from flows.params import EvalOptions, RoundParams, RoundResult, SearchOptions, TrainingOptions
from rstar.data.world import WorldConfig, generate_world, write_world

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SEARCH = SearchOptions(rollouts=3, candidates=2, extra={"extra_rollouts_if_unsolved": 0, "max_depth": 4})
TRAIN_FAST = {"max_steps": 2, "batch_size": 2, "max_length": 256}
EVAL_FAST = {"max_steps": 2, "max_step_tokens": 8}


def make_world(folder: Path, train: int = 12) -> dict[str, Path]:
    cfg = WorldConfig(seed=0, train=train, heldout=4, seed_sft=1, levels=(1, 2), level_weights=(0.5, 0.5))
    return write_world(generate_world(cfg), folder)


def oracle(world: dict[str, Path]) -> str:
    return f"fake:oracle?answers={world['train']}&p_correct=0.5"


def no_training() -> TrainingOptions:
    return TrainingOptions(train_policy=False, train_ppm=False)


@dataclass
class SynthesisSpy:
    """Records the shards whose search really ran (by their first problem id) and fails the chosen ones."""

    shard_of: dict[str, int] = field(default_factory=dict)  # first problem id -> shard index
    calls: list[int] = field(default_factory=list)
    fail: set[int] = field(default_factory=set)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SynthesisSpy:
    import tasks.synthesize as ts
    from rstar.data.problems import load_problems

    s = SynthesisSpy()
    real: Callable[..., Any] = ts.run_search

    def run_search(shard_dir: Path, *args: Any, **kw: Any) -> Any:
        first = load_problems(shard_dir / "problems.jsonl")[0][0].id
        idx = s.shard_of.setdefault(first, len(s.shard_of))
        s.calls.append(idx)
        if idx in s.fail:
            raise ValueError(f"injected failure in shard {idx}")
        return real(shard_dir, *args, **kw)

    monkeypatch.setattr(ts, "run_search", run_search)
    return s


def run_round(params: RoundParams) -> tuple[RoundResult, UUID]:
    from flows.round import evolution_round

    state = evolution_round(params, return_state=True)
    result = state.result()
    assert isinstance(result, RoundResult)
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return result, flow_run_id


def task_run_states(flow_run_id: UUID, expected: int, timeout: float = 20.0) -> dict[str, str]:
    """{task run name: state name} of a flow run, polled until `expected` runs are final (events arrive async)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            states = {r.name: (r.state.name or "") if r.state else "" for r in runs}
            final = [n for n, s in states.items() if s in ("Completed", "Cached", "Failed", "TimedOut", "Crashed")]
            if len(final) >= expected or time.monotonic() > deadline:
                return states
            time.sleep(0.5)


def flow_artifacts(flow_run_id: UUID) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a for a in arts if a.key}


def switch_home(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point the settings at another RSTAR_HOME (an independent store) sharing the session's built models."""
    from infra.settings import get_settings

    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to((Path(os.environ["RSTAR_HOME"]) / "models").resolve(), target_is_directory=True)
    monkeypatch.setenv("RSTAR_HOME", str(home))
    get_settings.cache_clear()


def file_sha(uri: str, name: str) -> str:
    from infra.storage import open_store

    return str(open_store().read_manifest(uri).files[name]["sha256"])


# --------------------------------------------------------------------------------------------------------------------


def test_round_produces_every_artifact_and_a_rerun_reuses_every_stage(
    prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy
) -> None:
    from infra.storage import open_store
    from tasks.common import resolve_model

    world = make_world(rstar_home.parent / "world")
    params = RoundParams(
        round_idx=1,
        problems=str(world["train"]),
        policy=oracle(world),
        search=SEARCH,
        shard_size=4,
        training=TrainingOptions(base_model="tiny:0", extra=TRAIN_FAST),
        evaluation=EvalOptions(benchmarks=[f"world={world['heldout']}"], limit=2, extra=EVAL_FAST),
    )
    result, run_id = run_round(params)

    store = open_store()
    stages = {key.split("/")[2] for key in store.list_artifacts("rounds/1")}
    assert stages == {"shards", "trees", "aggregate", "sft", "pairs", "report", "policy", "ppm", "eval"}
    assert len(store.list_artifacts("shared/problems")) == 1
    assert spy.calls == [0, 1, 2] and result.shards == 3 and not result.failed_shards
    assert result.coverage is not None and 0 < result.coverage <= 1
    assert result.trained_policy and result.trained_ppm
    assert result.policy.startswith("file://") and "/rounds/1/policy/" in result.policy
    policy_spec = resolve_model(result.policy)
    assert policy_spec is not None and policy_spec.startswith("hf:")
    assert (Path(policy_spec[3:]) / "config.json").is_file()
    assert set(result.accuracy) == {"world"}
    assert result.promoted == {"policy": True, "ppm": True}  # tracking off: the first candidate stands
    # The sft / pairs artifacts are the ones the models were trained on, and lineage is in the manifests.
    policy_manifest = store.read_manifest(result.policy)
    assert [p["uri"] for p in policy_manifest.parents] == [result.sft]
    assert store.read_manifest(result.aggregate).parents[0]["uri"] == result.trees[0]

    arts = flow_artifacts(run_id)
    assert {"round-1-accuracy", "round-1-data-quality", "round-1-mlflow-run", "round-1-artifacts"} <= set(arts)
    assert arts["round-1-artifacts"].data == store.uri("rounds/1") or store.uri("rounds/1") in str(
        arts["round-1-artifacts"].data
    )
    assert "world" in str(arts["round-1-accuracy"].data)
    assert "Coverage" in str(arts["round-1-data-quality"].data)

    # Same round, same inputs: nothing is computed again; only the side-effect stage (registry) runs.
    spy.calls.clear()
    again, run_id2 = run_round(params)
    assert spy.calls == []
    assert again.model_dump(exclude={"promoted"}) == result.model_dump(exclude={"promoted"})
    states = task_run_states(run_id2, expected=13)
    assert {n for n, s in states.items() if s != "Cached"} == {"promote-r1"}, states
    assert sorted(n for n in states if n.startswith("mcts-shard-")) == [
        "mcts-shard-0000",
        "mcts-shard-0001",
        "mcts-shard-0002",
    ]


def test_failed_shard_is_reported_and_a_rerun_computes_only_it_with_identical_data(
    prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.round import RoundFailed
    from rstar.data.problems import load_problems

    world = make_world(rstar_home.parent / "world")
    problems, _ = load_problems(world["train"])
    spy.shard_of = {problems[4 * i].id: i for i in range(3)}
    base = RoundParams(
        round_idx=1,
        problems=str(world["train"]),
        policy=oracle(world),
        search=SEARCH,
        shard_size=4,
        shard_concurrency=2,  # shards as concurrent Prefect futures (the other tests run them one by one)
        training=no_training(),
        evaluation=EvalOptions(enabled=False),
        register_models=False,
    )

    # 1. Shard 1 fails and nothing may fail: the round fails, naming the shard and what to do.
    spy.fail = {1}
    with pytest.raises(RoundFailed, match=r"1 of 3 synthesis shards failed .*shards 0001.*injected failure"):
        run_round(base)
    assert sorted(spy.calls) == [0, 1, 2]

    # 2. A third of the shards may fail: the round goes on without shard 1 and says so.
    tolerant = base.model_copy(update={"max_failed_shard_fraction": 0.34})
    spy.calls.clear()
    partial, run_id = run_round(tolerant)
    assert spy.calls == [1]  # shards 0 and 2 are cached; the failing one is tried again (and fails again)
    assert [f["shard"] for f in partial.failed_shards] == [1] and len(partial.trees) == 2
    assert "injected failure" in partial.failed_shards[0]["message"]
    report = flow_artifacts(run_id)["round-1-shard-failures"]
    assert "1 of 3" in str(report.data) and "tolerated" in str(report.data)

    # 3. The failure is fixed: the re-run computes that shard only, then the stages that depend on it.
    spy.fail = set()
    spy.calls.clear()
    resumed, _ = run_round(base)
    assert spy.calls == [1]
    assert not resumed.failed_shards and len(resumed.trees) == 3
    assert resumed.aggregate != partial.aggregate

    # 4. A clean run in an independent store gives the same artifacts, byte for byte where the data are.
    switch_home(monkeypatch, rstar_home.parent / "clean-home")
    spy.calls.clear()
    clean, _ = run_round(base)
    assert sorted(spy.calls) == [0, 1, 2]
    digest = lambda uri: uri.rstrip("/").rsplit("/", 1)[-1]  # noqa: E731
    for attr in ("aggregate", "sft", "pairs", "report"):
        assert digest(getattr(clean, attr)) == digest(getattr(resumed, attr)), attr
    assert [digest(u) for u in clean.trees] == [digest(u) for u in resumed.trees]
    assert clean.trees != resumed.trees  # two stores...
    for uri_clean, uri_resumed in zip(clean.trees, resumed.trees, strict=True):
        assert file_sha(uri_clean, "nodes.parquet") == file_sha(uri_resumed, "nodes.parquet")  # ...the same trees
    for attr, name in (("aggregate", "nodes.parquet"), ("sft", "sft.parquet"), ("pairs", "pairs.parquet")):
        assert file_sha(getattr(clean, attr), name) == file_sha(getattr(resumed, attr), name), attr


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import tasks.synthesize as ts
    from rstar.data.problems import load_problems

    real = ts.run_search
    marker = Path(os.environ["KILL_MARKER"])

    def run_search(shard_dir, *args, **kw):
        first = load_problems(shard_dir / "problems.jsonl")[0][0].id
        if first == os.environ["KILL_AT"]:
            result = real(shard_dir, *args, **kw)     # the search finishes and is written to the scratch folder,
            marker.write_text("ready")               # then the process dies before the artifact is stored
            time.sleep(600)
        return real(shard_dir, *args, **kw)

    ts.run_search = run_search
    from flows.params import RoundParams
    from flows.round import evolution_round
    evolution_round(RoundParams.model_validate_json(Path(sys.argv[1]).read_text()))
    """
)


def test_killing_a_round_loses_nothing_written_and_leaves_no_partial_artifact(
    prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy, tmp_path: Path
) -> None:
    from infra.storage import MANIFEST_NAME, open_store
    from rstar.data.problems import load_problems

    world = make_world(rstar_home.parent / "world", train=16)
    params = RoundParams(
        round_idx=2,
        problems=str(world["train"]),
        policy=oracle(world),
        search=SEARCH,
        shard_size=4,
        training=no_training(),
        evaluation=EvalOptions(enabled=False),
        register_models=False,
    )
    problems, _ = load_problems(world["train"])
    spy.shard_of = {problems[4 * i].id: i for i in range(4)}
    params_file = tmp_path / "params.json"
    params_file.write_text(params.model_dump_json())
    marker = tmp_path / "ready"
    env = {
        **os.environ,
        **prefect_harness.env,
        "RSTAR_HOME": str(rstar_home),
        "RSTAR_MLFLOW_TRACKING_URI": "off",
        "KILL_AT": problems[8].id,  # the first problem of shard 2
        "KILL_MARKER": str(marker),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(params_file)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(
                    f"the round exited early: {proc.stderr.read().decode()[-3000:] if proc.stderr else ''}"
                )
            assert time.monotonic() < deadline, "the round never reached shard 2"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()

    # Shards 0 and 1 were stored before the kill; shard 2's trees were searched but never committed.
    store = open_store()
    trees = store.list_artifacts("rounds/2/trees")
    assert len(trees) == 2
    for key in store.list_artifacts(""):
        store.get_artifact(key)  # every committed artifact is complete: all checksums verify
    root = rstar_home / "artifacts"
    for stage_dir in (root / "rounds").glob("*/*"):
        for art in stage_dir.iterdir():
            assert (art / MANIFEST_NAME).is_file(), f"partial artifact under a final key: {art}"
    work = list((rstar_home / "cache" / "work").iterdir())
    assert len(work) == 1  # shard 2's finished problems wait in its scratch folder

    # The re-run re-uses shards 0 and 1, resumes shard 2 from its scratch folder and runs shard 3.
    result, _ = run_round(params)
    assert len(result.trees) == 4 and not result.failed_shards
    assert sorted(spy.calls) == [2, 3], spy.calls
    resumed = store.read_manifest(result.trees[2]).config["info"]
    assert resumed["resumed_problems"] == 4  # shard 2's search was not repeated: its 4 problems came from scratch
    assert not list((rstar_home / "cache" / "work").iterdir())  # scratch folders go once their artifact is stored


def test_self_evolution_feeds_each_round_the_previous_rounds_models(
    prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy
) -> None:
    """Two rounds through `rstar evolve` (the CLI): round 2 searches with round 1's trained policy, boosts round 1's
    unsolved problems, and the summary holds accuracy before and after."""
    import argparse
    import json

    from infra.commands.evolve_cmd import register, run
    from infra.storage import open_store

    world = make_world(rstar_home.parent / "world", train=8)
    params = {
        "rounds": 2,
        "problems": str(world["train"]),
        "bootstrap_policy": oracle(world),
        "rollouts_first_round": 3,
        "rollouts": 2,
        "extra_rollouts_unsolved": 1,
        "candidates": 2,
        "search_extra": {"extra_rollouts_if_unsolved": 0, "max_depth": 2, "max_step_tokens": 8},
        "shard_size": 8,
        "training": {"base_model": "tiny:0", "train_ppm": False, "extra": TRAIN_FAST},
        "evaluation": {"benchmarks": [f"world={world['heldout']}"], "limit": 1, "extra": EVAL_FAST},
    }
    params_file = rstar_home.parent / "evolve.json"
    params_file.write_text(json.dumps(params))
    out = rstar_home.parent / "result.json"
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert run(parser.parse_args(["evolve", "--params", str(params_file), "--json", str(out)])) == 0

    result = json.loads(out.read_text())
    r1, r2 = result["rounds"]
    assert r1["trained_policy"] and "/rounds/1/policy/" in r1["policy"]
    store = open_store()
    r1_policy = store.read_manifest(r1["policy"])
    for tree_uri in r2["trees"]:
        assert store.read_manifest(tree_uri).models["policy"] == f"artifact:policy:{r1_policy.digest}"
    shard = store.read_manifest(store.read_manifest(r2["trees"][0]).parents[0]["uri"])
    assert {p["role"]: p["uri"] for p in shard.parents}["boost"] == r1["aggregate"]
    assert set(result["accuracy_before"]) == {"world"} and set(result["accuracy_after"]) == {"world"}
    assert len(spy.calls) == 2  # one shard per round


def test_seed_sft_bootstrap_trains_round_ones_generator(
    prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy
) -> None:
    """With `bootstrap_sft` a round 0 fine-tunes the base model on the seed set; that model searches round 1."""
    from flows.params import EvolutionParams
    from flows.self_evolution import self_evolution
    from infra.storage import open_store

    world = make_world(rstar_home.parent / "world", train=4)
    params = EvolutionParams(
        rounds=1,
        problems=str(world["train"]),
        bootstrap_sft=str(world["seed_sft"]),
        bootstrap_epochs=1,
        rollouts_first_round=2,
        candidates=2,
        search_extra={"extra_rollouts_if_unsolved": 0, "max_depth": 2, "max_step_tokens": 8},
        shard_size=4,
        training=TrainingOptions(base_model="tiny:0", train_policy=False, train_ppm=False, extra=TRAIN_FAST),
        evaluation=EvalOptions(benchmarks=[f"world={world['heldout']}"], limit=1, extra=EVAL_FAST),
        register_models=False,
    )
    result = self_evolution(params)
    store = open_store()
    boot = result.bootstrap_policy
    assert boot is not None and "/rounds/0/policy/" in boot
    boot_manifest = store.read_manifest(boot)
    seed_sft = store.read_manifest(boot_manifest.parents[0]["uri"])
    assert seed_sft.stage == "sft" and seed_sft.round == 0 and seed_sft.rows == 1
    assert boot_manifest.config["train"]["num_epochs"] == 1
    tree = store.read_manifest(result.rounds[0].trees[0])
    assert tree.models["policy"] == f"artifact:policy:{boot_manifest.digest}"  # round 1 searched with the bootstrap
    assert result.accuracy_bootstrap is not None and set(result.accuracy_bootstrap) == {"world"}


def test_final_ppm_round_trains_a_ppm_on_the_final_policys_own_trees(
    prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy, capsys: pytest.CaptureFixture[str]
) -> None:
    """`final_ppm`: after the last round one more round searches with the final policy and trains only a PPM on its
    pairs; the evolution's PPM is that one, its policy the last round's. (The policy here is the scripted oracle,
    which solves some problems and cannot be a backbone, so `training.ppm_base` names one; the default backbone, the
    final policy, is checked in test_flows_units.)"""
    from flows.params import EvolutionParams
    from flows.self_evolution import self_evolution
    from infra.storage import open_store

    world = make_world(rstar_home.parent / "world")
    params = EvolutionParams(
        rounds=1,
        problems=str(world["train"]),
        bootstrap_policy=oracle(world),
        rollouts_first_round=3,
        rollouts=3,
        candidates=2,
        search_extra=SEARCH.extra,
        shard_size=12,
        training=TrainingOptions(
            train_policy=False, train_ppm=False, ppm_base="tiny:0", extra=TRAIN_FAST, ppm_extra=TRAIN_FAST
        ),
        evaluation=EvalOptions(
            benchmarks=[f"world={world['heldout']}"], mode="mcts", budget=2, limit=1, extra=EVAL_FAST
        ),
        evaluate_base=False,
        register_models=False,
        final_ppm=True,
    )
    state = self_evolution(params, return_state=True)
    result = state.result()
    (r1,) = result.rounds
    final = result.final_ppm_round
    assert final is not None and final.round_idx == 2
    assert not r1.trained_ppm and r1.ppm is None
    assert not final.trained_policy and final.policy == r1.policy == oracle(world)  # carried over untouched
    assert final.trained_ppm and final.ppm is not None and "/rounds/2/ppm/" in final.ppm
    assert (result.policy, result.ppm) == (r1.policy, final.ppm)
    store = open_store()
    for tree_uri in final.trees:  # searched by the final policy, terminal-guided, unsolved problems boosted
        tree = store.read_manifest(tree_uri)
        assert tree.models["policy"] == oracle(world)
        assert tree.config["search"]["mode"] == "terminal"
    ppm = store.read_manifest(final.ppm)
    pairs = store.read_manifest(final.pairs or "")
    assert pairs.rows and [p["uri"] for p in ppm.parents] == [final.pairs]  # learned from the final policy's pairs
    assert not store.list_artifacts("rounds/2/policy/")
    assert set(final.accuracy) == {"world"} and result.accuracy_after == final.accuracy  # judged with its PPM
    assert len(spy.calls) == 2  # one shard per round

    from infra.commands.evolve_cmd import _print_evolution
    from infra.settings import get_settings

    capsys.readouterr()
    _print_evolution(result, get_settings())
    printed = capsys.readouterr().out
    assert "PPM only, on the final policy's own trees:\nround 2:" in printed
    assert f"final PPM:          {final.ppm}" in printed and "policy with the final PPM)" in printed
    import json

    assert state.state_details.flow_run_id is not None
    table = flow_artifacts(state.state_details.flow_run_id)["self-evolution-summary"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [r["round"] for r in rows] == ["base", 1, "2 (PPM only)"]
    assert rows[-1]["world"] == final.accuracy["world"] and rows[-1]["policy"] == r1.policy


def test_evaluate_flow_wraps_the_eval_library(prefect_harness: Any, rstar_home: Path, spy: SynthesisSpy) -> None:
    from flows.evaluate import evaluate

    world = make_world(rstar_home.parent / "world", train=4)
    policy = f"fake:oracle?answers={world['heldout']}&p_correct=1.0"
    accuracy = evaluate(policy, options=EvalOptions(benchmarks=[f"world={world['heldout']}"], limit=4))
    assert set(accuracy) == {"world"} and accuracy["world"] == pytest.approx(1.0)


@pytest.fixture(autouse=True)
def _quiet_prefect_logs() -> Iterator[None]:
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    yield

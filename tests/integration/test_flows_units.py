"""Fast checks of the flow layer's pure parts and task bodies (no Prefect server): round wiring, retry rules,
content addressing, the store-level skip, parameter validation and the CLI's parameter building."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from flows.params import (
    EvalOptions,
    EvolutionParams,
    PreviousRound,
    RoundParams,
    SearchOptions,
    TrainingOptions,
    final_ppm_params,
    round_params,
)
from rstar.data.problems import write_problems_jsonl
from rstar.types import Problem


def _evo(**kw: Any) -> EvolutionParams:
    return EvolutionParams(problems="train.jsonl", bootstrap_policy="openai:http://big:8000/v1#teacher", **kw)


# -------------------------------------------------------------------------------------------------- round wiring


def test_round_1_is_terminal_guided_from_the_bootstrap_with_8_rollouts() -> None:
    p = round_params(_evo(), 1, None)
    assert (p.round_idx, p.policy, p.ppm, p.boost) == (1, "openai:http://big:8000/v1#teacher", None, None)
    assert (p.search.mode, p.search.rollouts) == ("terminal", 8)


def test_round_k_uses_round_k_minus_1_models_and_boosts_its_unsolved() -> None:
    prev = PreviousRound(
        policy="file:///a/rounds/1/policy/p1", ppm="file:///a/rounds/1/ppm/q1", aggregate="file:///agg1"
    )
    p2 = round_params(_evo(), 2, prev)
    assert (p2.policy, p2.ppm, p2.boost) == (prev.policy, prev.ppm, prev.aggregate)
    assert (p2.search.mode, p2.search.rollouts) == ("terminal", 16)  # PPM exists but round 2 is terminal-guided
    p3 = round_params(_evo(), 3, prev)
    assert p3.search.mode == "ppm"  # PPM-augmented from round 3, as in the paper
    assert round_params(_evo(ppm_from_round=2), 2, prev).search.mode == "ppm"


def test_round_3_without_any_ppm_stays_terminal_guided() -> None:
    prev = PreviousRound(policy="file:///p", ppm=None, aggregate="file:///agg")
    assert round_params(_evo(), 3, prev).search.mode == "terminal"


def test_the_final_ppm_round_searches_with_the_final_policy_and_trains_only_its_ppm() -> None:
    last = PreviousRound(
        policy="file:///a/rounds/3/policy/p3", ppm="file:///a/rounds/3/ppm/q3", aggregate="file:///agg3"
    )
    evo = _evo(
        rounds=3,
        training=TrainingOptions(base_model="smollm2-135m", ppm_epochs=2.0),
        evaluation=EvalOptions(mode="mcts", budget=4),
    )
    p = final_ppm_params(evo, 4, last)
    assert (p.round_idx, p.policy, p.boost, p.search.rollouts) == (4, last.policy, last.aggregate, 16)
    assert p.search.mode == "terminal"  # pure Monte Carlo Q, although round 4 would be PPM-augmented
    t = p.training
    assert (t.train_policy, t.train_ppm, t.ppm_base, t.ppm_epochs) == (False, True, last.policy, 2.0)
    assert t.base_model == "smollm2-135m"  # the backbone is ppm_base, not the untouched base model
    assert p.evaluation.enabled and p.evaluation.mode == "mcts"
    # greedy (or maj) would only repeat the last round's numbers: not evaluated; a PPM mode or an alias is
    assert not final_ppm_params(_evo(), 4, last).evaluation.enabled
    assert final_ppm_params(_evo(evaluation=EvalOptions(mode="best-of-n")), 4, last).evaluation.enabled
    assert not final_ppm_params(_evo(evaluation=EvalOptions(mode="mcts", enabled=False)), 4, last).evaluation.enabled
    # its own problem set (no boost: the last round's unsolved list is about other problems) and PPM settings
    own = _evo(
        problem_limit=64,
        final_ppm_problems="fresh.jsonl",
        training=TrainingOptions(ppm_extra={"max_steps": 40, "warmup": 0.1}),
        final_ppm_extra={"max_steps": -1},
    )
    q = final_ppm_params(own, 4, last)
    assert (q.problems, q.problem_limit, q.boost) == ("fresh.jsonl", None, None)
    assert q.training.ppm_extra == {"max_steps": -1, "warmup": 0.1}
    assert q.training.ppm_config()["max_steps"] == -1
    assert (p.problems, p.training.ppm_extra) == ("train.jsonl", {})  # by default: the rounds' problems, settings


def test_parameters_are_validated() -> None:
    assert EvalOptions(mode="greedy, MCTS-weighted,wmaj").mode == "greedy, MCTS-weighted,wmaj"
    for bad in ("dvts", "greedy,mcts-top2", " , "):
        with pytest.raises(ValidationError, match="mode"):
            EvalOptions(mode=bad)
    with pytest.raises(ValidationError):
        RoundParams(problems="x.jsonl", policy="fake:oracle", max_failed_shard_fraction=1.5)
    with pytest.raises(ValidationError):
        RoundParams(problems="x.jsonl", policy="fake:oracle", shard_size=0)
    with pytest.raises(ValidationError):
        RoundParams(problems="x.jsonl", policy="fake:oracle", not_a_field=1)  # type: ignore[call-arg]
    assert RoundParams(problems="x.jsonl", policy="fake:oracle", ppm="none").ppm is None


def test_search_options_map_onto_search_config() -> None:
    from rstar.config import SearchConfig

    opts = SearchOptions(rollouts=4, candidates=2, max_depth=5, extra={"c_uct": 1.5})
    cfg = SearchConfig.for_round(2, **opts.config_dict())
    assert (cfg.rollouts, cfg.candidates, cfg.max_depth, cfg.c_uct, cfg.mode) == (4, 2, 5, 1.5, "terminal")


def test_training_options_map_onto_train_config() -> None:
    from rstar.train.common import TrainConfig

    t = TrainingOptions(epochs=3, learning_rate=1e-4, extra={"max_steps": 2})
    cfg = TrainConfig(**t.policy_config())
    assert (cfg.num_epochs, cfg.learning_rate, cfg.max_steps) == (3, 1e-4, 2)
    assert TrainConfig.for_ppm(**t.ppm_config()).num_epochs == 1.0


def test_a_round_that_cannot_train_fails_before_searching() -> None:
    from flows.round import RoundFailed, check_setup

    with pytest.raises(RoundFailed, match="base_model"):
        check_setup(RoundParams(problems="x.jsonl", policy="openai:http://h:1/v1#m"))
    check_setup(
        RoundParams(problems="x.jsonl", policy="openai:http://h:1/v1#m", training=TrainingOptions(base_model="tiny:0"))
    )
    check_setup(RoundParams(problems="x.jsonl", policy="file:///store/rounds/1/policy/abc"))
    with pytest.raises(RoundFailed, match="cannot be fine-tuned"):  # continuing needs a local input policy
        check_setup(
            RoundParams(
                problems="x.jsonl",
                policy="openai:http://h:1/v1#m",
                training=TrainingOptions(base_model="tiny:0", continue_training=True),
            )
        )
    with pytest.raises(RoundFailed, match="backbone for the PPM"):
        check_setup(RoundParams(problems="x.jsonl", policy="fake:oracle", training=TrainingOptions(train_policy=False)))
    with pytest.raises(RoundFailed, match="PPM"):
        check_setup(RoundParams(problems="x.jsonl", policy="tiny:0", search=SearchOptions(mode="ppm")))


def test_a_round_hands_its_shards_to_the_fanout_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.synthesize_shard
    from flows.round import run_shards
    from flows.runners import FanOut
    from infra.storage import ArtifactRef

    seen: dict[str, Any] = {}

    def fake_fan_out(shards: list[ArtifactRef], **kw: Any) -> tuple[dict[int, ArtifactRef], list[dict[str, Any]]]:
        seen.update(kw, shards=shards)
        return {0: ArtifactRef(uri="file:///t/0", digest="t0")}, [{"shard": 1, "message": "x"}]

    monkeypatch.setattr(flows.synthesize_shard, "fan_out_shards", fake_fan_out)
    shards = [ArtifactRef(uri=f"file:///s/{i}", digest=f"s{i}") for i in range(2)]
    evo = _evo(fanout=FanOut(backend="ray"), shard_timeout_s=60)
    params = round_params(evo, 1, None)
    done, failures = run_shards(params, shards, "run-1")
    assert set(done) == {0} and failures[0]["shard"] == 1
    assert seen["fanout"].backend == "ray" and seen["shards"] == shards
    assert (seen["round_idx"], seen["shard_timeout_s"], seen["parent_run_id"]) == (1, 60, "run-1")
    assert seen["search"]["rollouts"] == 8


# -------------------------------------------------------------------------------------------------- retries


class APIConnectionError(Exception):  # the name the OpenAI client uses
    pass


def test_only_transient_errors_are_retried() -> None:
    from prefect.states import Failed
    from prefect.task_engine import TaskRunTimeoutError

    from tasks.common import is_transient, retry_on_transient

    assert is_transient(ConnectionRefusedError("refused"))
    assert is_transient(TimeoutError("read timed out"))
    assert is_transient(APIConnectionError("server went away"))
    wrapped = RuntimeError("shard failed")
    wrapped.__cause__ = ConnectionResetError("reset")
    assert is_transient(wrapped)
    assert not is_transient(ValueError("bad config"))
    assert not is_transient(KeyError("x"))
    assert not is_transient(TaskRunTimeoutError("shard ran past its budget"))
    assert retry_on_transient(None, None, Failed(data=ConnectionError("down")))
    assert not retry_on_transient(None, None, Failed(data=ValueError("bad")))


# -------------------------------------------------------------------------------------------------- content addressing


def test_stage_digests_depend_on_inputs_not_on_the_store(rstar_home: Path) -> None:
    from infra.storage import ArtifactRef
    from tasks.common import stage_digest

    a = ArtifactRef(uri="file:///one/rounds/1/shards/abc", digest="abc")
    b = ArtifactRef(uri="s3://bucket/x/rounds/1/shards/abc", digest="abc")
    cfg = {"search": {"rollouts": 4}, "seed": 0}
    assert stage_digest("trees", {"shard": a}, cfg, {"policy": "fake:oracle"}) == stage_digest(
        "trees", {"shard": b}, cfg, {"policy": "fake:oracle"}
    )
    assert stage_digest("trees", {"shard": a}, {**cfg, "seed": 1}, {"policy": "fake:oracle"}) != stage_digest(
        "trees", {"shard": a}, cfg, {"policy": "fake:oracle"}
    )
    assert stage_digest("trees", {"shard": a}, cfg, {"policy": "fake:other"}) != stage_digest(
        "trees", {"shard": a}, cfg, {"policy": "fake:oracle"}
    )


def test_materialize_skips_work_already_in_the_store(rstar_home: Path) -> None:
    """The second line of defence: with no Prefect at all, an artifact that exists is returned, not rebuilt."""
    from tasks.common import StageOutput, materialize

    calls: list[int] = []

    def build(out: Path, inputs: object) -> StageOutput:
        calls.append(1)
        (out / "x.json").write_text("{}")
        return StageOutput(rows=1, metrics={"m": 1.0})

    first = materialize(stage="demo", round_idx=1, parents={}, config={"a": 1}, build=build)
    second = materialize(stage="demo", round_idx=1, parents={}, config={"a": 1}, build=build)
    third = materialize(stage="demo", round_idx=1, parents={}, config={"a": 2}, build=build)
    assert first == second and first.key.startswith("rounds/1/demo/")
    assert third.digest != first.digest
    assert len(calls) == 2


def test_a_failing_build_leaves_nothing_under_the_final_key(rstar_home: Path) -> None:
    from infra.storage import artifact_key, open_store
    from tasks.common import StageOutput, materialize, stage_digest

    def build(out: Path, inputs: object) -> StageOutput:
        (out / "half.parquet").write_bytes(b"partial")
        raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError):
        materialize(stage="demo", round_idx=1, parents={}, config={}, build=build)
    key = artifact_key(1, "demo", stage_digest("demo", {}, {}, {}))
    store = open_store()
    assert not store.exists(key)
    assert not (rstar_home / "artifacts" / key).exists()


def test_shards_boost_the_previous_rounds_unsolved_problems(rstar_home: Path) -> None:
    from infra.storage import Manifest, artifact_key, open_store
    from tasks.shard import RERUN_FILE, ingest_problems_fn, shard_problems_fn, shard_rollouts

    src = rstar_home / "p.jsonl"
    problems = [Problem(id=f"q{i}", question=f"What is {i} + 1?", answer=str(i + 1)) for i in range(5)]
    write_problems_jsonl(problems, src)
    ref = ingest_problems_fn(str(src))
    assert ref.rows == 5 and ref.key.startswith("shared/problems/")
    assert ingest_problems_fn(str(src)) == ref  # content-addressed: same problems, same artifact

    agg_dir = rstar_home / "agg"
    agg_dir.mkdir()
    pl.DataFrame(
        {"problem_id": ["q1", "q3"], "extra_rollouts": [16, 8], "rerun_reason": ["hard", "few_correct"]},
        schema={"problem_id": pl.Utf8, "extra_rollouts": pl.Int32, "rerun_reason": pl.Utf8},
    ).write_parquet(agg_dir / RERUN_FILE)
    store = open_store()
    boost = store.put_artifact(
        artifact_key(1, "aggregate", "feed"),
        agg_dir,
        Manifest.create(key=artifact_key(1, "aggregate", "feed"), digest="feed", stage="aggregate", round=1),
    )
    shards = shard_problems_fn(ref, 2, 2, rollouts=4, boost=boost, extra_unsolved=32)
    assert [s.rows for s in shards] == [2, 2, 1]
    per = [shard_rollouts(store.get_artifact(s.uri)) for s in shards]
    assert per == [{"q1": 36}, {"q3": 12}, {}]  # hard: +32 (this round's setting); few correct: the aggregate's +8
    again = shard_problems_fn(ref, 2, 2, rollouts=4, boost=boost, extra_unsolved=32)
    assert again == shards


# -------------------------------------------------------------------------------------------------- CLI


def test_cli_builds_round_params_from_a_json_file_and_flags(tmp_path: Path) -> None:
    from infra.commands.evolve_cmd import register, round_params_from_args

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    f = tmp_path / "round.json"
    f.write_text(
        json.dumps({"problems": "a.jsonl", "policy": "fake:oracle", "search": {"rollouts": 3, "candidates": 2}})
    )
    args = parser.parse_args(
        [
            "round",
            "--params",
            str(f),
            "--round",
            "3",
            "--rollouts",
            "5",
            "--base-model",
            "tiny:0",
            "--benchmarks",
            "gsm8k,math500",
            "--no-register",
        ]
    )
    p = round_params_from_args(args)
    assert (p.round_idx, p.problems, p.policy) == (3, "a.jsonl", "fake:oracle")
    assert (p.search.rollouts, p.search.candidates) == (5, 2)
    assert p.training.base_model == "tiny:0"
    assert p.evaluation.benchmarks == ["gsm8k", "math500"]
    assert p.register_models is False


def test_evolve_cli_turns_on_the_final_ppm_round_only_when_asked(tmp_path: Path) -> None:
    import argparse

    from infra.commands.evolve_cmd import evolution_params_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    base = ["evolve", "--problems", "a.jsonl", "--bootstrap-policy", "fake:oracle"]
    assert evolution_params_from_args(parser.parse_args(base)).final_ppm is False
    assert evolution_params_from_args(parser.parse_args([*base, "--final-ppm"])).final_ppm is True
    f = tmp_path / "evolve.json"
    f.write_text(json.dumps({"problems": "a.jsonl", "bootstrap_policy": "fake:oracle", "final_ppm": True}))
    assert evolution_params_from_args(parser.parse_args(["evolve", "--params", str(f)])).final_ppm is True  # kept


def test_cli_reports_bad_parameters_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.commands.evolve_cmd import register, run
    from infra.settings import get_settings, prefect_env

    monkeypatch.setenv("RSTAR_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    for key, value in prefect_env(get_settings()).items():  # run() exports these: keep them test-scoped
        monkeypatch.setenv(key, os.environ.get(key, value))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["round", "--problems", "a.jsonl", "--policy", "fake:oracle", "--shard-size", "0"])
    assert run(args) == 2
    assert "shard_size" in capsys.readouterr().err
    get_settings.cache_clear()


def test_evolution_needs_a_bootstrap_and_a_base_for_seed_sft() -> None:
    from pydantic import ValidationError

    from flows.params import EvolutionParams, TrainingOptions

    with pytest.raises(ValidationError, match="bootstrap_policy"):
        EvolutionParams(problems="train.jsonl")
    with pytest.raises(ValidationError, match="base_model"):
        EvolutionParams(problems="train.jsonl", bootstrap_sft="seed_sft.jsonl")
    evo = EvolutionParams(
        problems="train.jsonl",
        bootstrap_sft="seed_sft.jsonl",
        bootstrap_epochs=5,
        bootstrap_learning_rate=1e-4,
        training=TrainingOptions(base_model="smollm2-135m", epochs=2, batch_size=8),
    )
    assert evo.bootstrap_config() == {"num_epochs": 5, "learning_rate": 1e-4, "batch_size": 8}


def test_seed_sft_file_is_read_into_the_sft_schema(tmp_path: Path) -> None:
    import json

    from rstar.data.schema import SFT_SCHEMA
    from tasks.bootstrap import read_seed_sft

    f = tmp_path / "seed.jsonl"
    rows = [
        {"problem_id": "a", "prompt": "P1", "completion": "x = 1\n<end_of_step>\nprint(x)\n<end_of_code>\n"},
        {"problem_id": "b", "prompt": "P2", "completion": ""},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    df = read_seed_sft(f)
    assert df.columns[: len(SFT_SCHEMA)] == list(SFT_SCHEMA) and df.height == 1
    assert df.row(0, named=True)["num_steps"] == 2 and df.row(0, named=True)["source"] == "seed"
    with pytest.raises(ValueError, match="lacks columns"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}))
        read_seed_sft(tmp_path / "bad.jsonl")

"""`rstar demo`'s parameters: the SmolLM2 preset is a seed-SFT bootstrap + one round on a generated world; the smoke
preset keeps the scripted bootstrap. Building them reads and writes only the world files (no model, no Prefect run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.params import DEMO, DEMO_PRESETS, SMOKE
from infra.commands.evolve_cmd import demo_params


def _jsonl(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_smollm2_preset_bootstraps_by_seed_sft_and_runs_one_round(tmp_path):
    params = demo_params(tmp_path, preset="smollm2")

    assert params.training.base_model == "smollm2-135m" == DEMO.base_model
    assert params.bootstrap_policy is None  # round 0 fine-tunes SmolLM2 on the seed split
    seed_rows = _jsonl(params.bootstrap_sft)
    assert len(seed_rows) == DEMO.seed_sft
    assert all(set(r) >= {"prompt", "completion"} and "<end_of_answer>" in r["completion"] for r in seed_rows)
    assert params.rounds == 1 and params.training.continue_training
    assert params.training.ppm_config()["max_steps"] == DEMO.ppm_extra[0][1]
    assert not params.evaluate_base  # the bootstrap is the "before"
    train = _jsonl(params.problems)
    (bench,) = params.evaluation.benchmarks
    heldout = _jsonl(bench.split("=", 1)[1])
    assert len(train) == DEMO.train_problems and len(heldout) == DEMO.heldout_problems
    assert not {p["question"] for p in train} & {p["question"] for p in heldout}
    assert not [p for p in heldout if any(p["question"] in r["prompt"] for r in seed_rows)]


def test_smoke_preset_uses_the_scripted_bootstrap_and_the_tiny_model(tmp_path):
    params = demo_params(tmp_path, preset="smoke", rounds=1)

    assert params.training.base_model == SMOKE.base_model == "tiny:0"
    assert params.bootstrap_sft is None
    assert params.bootstrap_policy.startswith("fake:oracle?answers=") and str(tmp_path) in params.bootstrap_policy
    assert params.rounds == 1 and params.evaluate_base


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown demo preset 'huge'.*smoke.*smollm2"):
        demo_params(tmp_path, preset="huge")
    assert set(DEMO_PRESETS) == {"smollm2", "smoke"}

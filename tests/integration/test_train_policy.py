"""Policy SFT with TRL on a tiny random Qwen2 model: the loss falls, weights change, the checkpoint round-trips."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rstar.data.schema import SFT_SCHEMA
from rstar.models.tiny import TinyModelConfig, build_tiny_model
from rstar.train.common import MANIFEST, TrainConfig, digest_rows
from rstar.train.policy import train_policy
from rstar.verify.steps import build_prompt

pytestmark = pytest.mark.slow


def sft_rows(n: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        a, b = 3 + 7 * i % 40, 2 + 5 * i % 20
        completion = (
            f"# Step 1: add the apples bought\ntotal = {a} + {b}\n<end_of_step>\n"
            f"# Now print the final answer\nprint(total)\n<end_of_code>\n"
            f"<output>\n{a + b}\n<end_of_output>\n<answer>\nThe answer is \\boxed{{{a + b}}}\n<end_of_answer>\n"
        )
        rows.append(
            {
                "problem_id": f"p{i:02d}",
                "tree_id": f"p{i:02d}",
                "leaf_id": "0.0.0",
                "rank": 0,
                "prompt": build_prompt(f"Tom has {a} apples and buys {b} more. How many apples does Tom have?"),
                "completion": completion,
                "avg_q": 1.0,
                "min_q": 1.0,
                "num_steps": 2,
                "source": "test",
            }
        )
    return pl.DataFrame(rows, schema=SFT_SCHEMA)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TinyModelConfig(seed=0))


def _state(path: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _eos_logprob(model: Any, tokenizer: Any, text: str) -> float:
    """log P(EOS | text): whether the policy learned to stop after a finished solution."""
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    return float(torch.log_softmax(logits.float(), -1)[tokenizer.eos_token_id])


@pytest.fixture(scope="module")
def trained(base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, pl.DataFrame]:
    data = sft_rows(12)
    long = data.row(0, named=True) | {"problem_id": "long", "completion": "x = 1\n<end_of_step>\n" * 200}
    data = pl.concat([data, pl.DataFrame([long], schema=SFT_SCHEMA)])
    cfg = TrainConfig(learning_rate=5e-3, num_epochs=4, batch_size=4, max_length=256, weight_decay=0.0, seed=0)
    return train_policy(data, base, tmp_path_factory.mktemp("policy"), cfg), data


def test_loss_falls_and_weights_change(trained: tuple[Any, pl.DataFrame], base: Path) -> None:
    result, _ = trained
    m = result.metrics
    assert m["examples"] == 12 and m["dropped_overlong"] == 1  # the 200-step completion does not fit in 256 tokens
    assert m["steps"] == 12 and len(m["losses"]) == 12
    assert all(math.isfinite(x) for x in m["losses"])
    assert sum(m["losses"][-3:]) / 3 < 0.8 * sum(m["losses"][:3]) / 3
    before, after = _state(base), _state(result.path)
    assert before.keys() == after.keys()
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) >= 0.9 * len(before), f"only {len(changed)}/{len(before)} tensors changed"


def test_checkpoint_reloads_and_scores_identically(trained: tuple[Any, pl.DataFrame]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, data = trained
    reloaded = AutoModelForCausalLM.from_pretrained(result.path)
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    text = data["prompt"][3] + data["completion"][3]
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    result.model.eval()
    with torch.no_grad():
        a = result.model(input_ids=ids).logits
        b = reloaded(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-6)
    # the delimiters are plain text: no tokens were added, the vocabulary is the base's
    assert len(tokenizer) == len(result.tokenizer) and reloaded.config.vocab_size >= len(tokenizer)


def test_policy_learns_to_stop_after_the_answer(trained: tuple[Any, pl.DataFrame], base: Path) -> None:
    from transformers import AutoModelForCausalLM

    result, data = trained
    finished = data["prompt"][5] + data["completion"][5]
    before = _eos_logprob(AutoModelForCausalLM.from_pretrained(base), result.tokenizer, finished)
    after = _eos_logprob(result.model, result.tokenizer, finished)
    assert after > before + 1.0, (before, after)


def test_manifest_names_config_data_and_base(trained: tuple[Any, pl.DataFrame], base: Path) -> None:
    result, data = trained
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["kind"] == "policy" and manifest["base"] == str(base)
    assert manifest["config"]["learning_rate"] == 5e-3
    kept = data.filter(pl.col("problem_id") != "long")
    cols = ["problem_id", "prompt", "completion"]
    assert manifest["data"]["digest"] == digest_rows(kept.select(cols).to_dicts(), cols)
    assert manifest["metrics"]["steps"] == 12 and manifest["versions"]["trl"]
    assert not (result.path / "_trainer").exists()


def test_lora_trains_adapters_and_saves_a_merged_model(base: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(learning_rate=1e-2, batch_size=4, max_steps=3, lora=True, lora_r=4, lora_alpha=8, seed=1)
    result = train_policy(sft_rows(8), base, tmp_path / "lora", cfg)
    total = sum(v.numel() for v in _state(base).values())
    assert 0 < result.metrics["trainable_params"] < 0.5 * total
    after = _state(tmp_path / "lora")  # a plain causal LM folder: the adapters are merged
    before = _state(base)
    assert after.keys() == before.keys()
    assert any(not (before[k] == after[k]).all() for k in before)


def test_continue_from_an_earlier_checkpoint(trained: tuple[Any, pl.DataFrame], base: Path, tmp_path: Path) -> None:
    first, _ = trained
    cfg = TrainConfig(learning_rate=1e-3, batch_size=4, max_steps=1, seed=0)
    result = train_policy(sft_rows(4), base, tmp_path / "round2", cfg, init_from=first.path)
    assert result.manifest["base"] == str(base) and result.manifest["init_from"] == str(first.path)
    assert result.manifest["init_manifest_data"] == first.manifest["data"]
    assert result.metrics["first_loss"] < first.metrics["first_loss"]  # it starts from the trained weights


def test_a_one_step_round_with_warmup_still_trains(base: Path, tmp_path: Path) -> None:
    """A round with a handful of SFT rows is one optimizer step; a 10% warm-up must not make it a step at lr 0."""
    cfg = TrainConfig(learning_rate=1e-3, batch_size=8, num_epochs=1.0, warmup=0.1, weight_decay=0.0, seed=0)
    result = train_policy(sft_rows(5), base, tmp_path / "one-step", cfg)
    assert result.metrics["steps"] == 1
    before, after = _state(base), _state(result.path)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) >= 0.9 * len(before), f"only {len(changed)}/{len(before)} tensors changed"


def test_bad_input(base: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        train_policy(pl.DataFrame(schema=SFT_SCHEMA), base, tmp_path / "x", TrainConfig())
    with pytest.raises(ValueError, match="columns"):
        train_policy(pl.DataFrame({"text": ["a"]}), base, tmp_path / "x", TrainConfig())
    rows = sft_rows(2)
    too_long = rows.with_columns(pl.Series("completion", [c * 100 for c in rows["completion"]]))
    with pytest.raises(ValueError, match="longer than max_length"):
        train_policy(too_long, base, tmp_path / "x", TrainConfig(max_length=64))


def test_cli(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rstar.cli import main

    sft_rows(4).write_parquet(tmp_path / "sft.parquet")
    argv = [
        "train-policy",
        "--data",
        str(tmp_path / "sft.parquet"),
        "--base",
        f"hf:{base}",
        "--out",
        str(tmp_path / "p"),
    ]
    assert main([*argv, "--max-steps", "2", "--batch-size", "2", "--lr", "1e-3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train-policy: 4 examples, 2 steps" in out
    assert (tmp_path / "p" / MANIFEST).exists() and (tmp_path / "p" / "config.json").exists()
    assert main(["train-policy", "--data", str(tmp_path / "nope.parquet"), "--base", f"hf:{base}", "--out", "x"]) == 2
    assert main(["train-policy", "--data", str(tmp_path / "sft.parquet"), "--base", "hf:/nope", "--out", "x"]) == 2
    assert "error" in capsys.readouterr().err

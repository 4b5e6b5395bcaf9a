"""PPM training with TRL's RewardTrainer on a tiny model: a learnable signal is learned (>= 90% held-out pair accuracy),
shuffled labels are not (~50%), the checkpoint reloads and scores identically, long pairs are cut from the left."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rstar.models.ppm import HFRewardModel, encode_left
from rstar.models.tiny import TinyModelConfig, build_tiny_model
from rstar.train.common import MANIFEST, TrainConfig
from rstar.train.ppm import heldout_problem, split_pairs, train_ppm
from rstar.verify.steps import build_prompt

GOOD = "# Step 2: add the apples bought\ntotal = x + {b}\n<end_of_step>\n"
BAD = "# Step 2: subtract the apples bought\ntotal = x - {b}\n<end_of_step>\n"


def synthetic_pairs(n: int, *, shuffle_labels: bool = False, seed: int = 0) -> pl.DataFrame:
    """Pairs whose chosen step adds and whose rejected step subtracts (a signal a tiny model can learn), or the same
    pairs with chosen / rejected swapped at random (no signal: held-out accuracy must stay near chance)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 30)
        prefix = build_prompt(f"Tom has {a} apples and buys {b} more. How many apples does Tom have?")
        prefix += f"# Step 1: count the apples\nx = {a}\n<end_of_step>\n"
        chosen, rejected = GOOD.format(b=b), BAD.format(b=b)
        if shuffle_labels and rng.random() < 0.5:
            chosen, rejected = rejected, chosen
        rows.append(
            {"problem_id": f"p{i:03d}", "prefix": prefix, "chosen": chosen, "rejected": rejected, "weight": 1.0}
        )
    return pl.DataFrame(rows)


FAST = {"learning_rate": 2e-3, "batch_size": 16, "num_epochs": 2, "weight_decay": 0.0, "max_length": 256}


# --------------------------------------------------------------------------------------------------------------------
# Fast checks (no training)


def test_heldout_split_is_by_problem_stable_and_never_empty() -> None:
    pairs = pl.concat([synthetic_pairs(40), synthetic_pairs(40, seed=1)])  # two pairs per problem id
    train, held = split_pairs(pairs, 0.25)
    assert train.height + held.height == pairs.height
    assert not set(train["problem_id"]) & set(held["problem_id"])
    assert 0.1 < held["problem_id"].n_unique() / 40 < 0.45
    _, again_held = split_pairs(pairs.reverse(), 0.25)
    assert set(again_held["problem_id"]) == set(held["problem_id"])
    assert all(heldout_problem(p, 0.25) for p in held["problem_id"])
    # tiny sets still get one problem on each side; a fraction of 0 holds nothing out
    t, h = split_pairs(synthetic_pairs(2), 0.01)
    assert t.height == 1 and h.height == 1
    assert split_pairs(synthetic_pairs(5), 0.0)[1].height == 0


class _BosTokenizer:
    bos_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [0, *(ord(c) for c in text)]}


def test_encode_left_keeps_the_end_and_the_bos() -> None:
    tok = _BosTokenizer()
    assert encode_left(tok, "abc", 10) == ([0, 97, 98, 99], False)
    assert encode_left(tok, "abcdef", 4) == ([0, 100, 101, 102], True)


# --------------------------------------------------------------------------------------------------------------------
# Training (slow)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), TinyModelConfig(seed=0))


@pytest.fixture(scope="module")
def learned(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = TrainConfig.for_ppm(heldout_fraction=0.25, seed=0, **FAST)
    return train_ppm(synthetic_pairs(120), base, tmp_path_factory.mktemp("ppm"), cfg)


@pytest.mark.slow
def test_a_learnable_signal_reaches_90_percent_heldout_accuracy(learned: Any, base: Path) -> None:
    m = learned.metrics
    assert m["heldout_pairs"] >= 20 and m["heldout_problems"] == m["heldout_pairs"]
    assert m["train_pairs"] + m["heldout_pairs"] == 120
    assert m["heldout_accuracy"] >= 0.9, m
    assert m["last_loss"] < 0.5 * m["first_loss"]
    assert m["truncated_pairs"] == 0 and m["dropped_step_too_long"] == 0
    from transformers import AutoModelForCausalLM

    backbone = AutoModelForCausalLM.from_pretrained(base).model.embed_tokens.weight
    assert not backbone.equal(learned.model.model.embed_tokens.weight)  # the backbone trained, not only the head


@pytest.mark.slow
def test_shuffled_labels_stay_near_chance(base: Path, tmp_path: Path) -> None:
    cfg = TrainConfig.for_ppm(heldout_fraction=0.25, seed=0, **FAST)
    result = train_ppm(synthetic_pairs(120, shuffle_labels=True), base, tmp_path, cfg)
    assert 0.25 <= result.metrics["heldout_accuracy"] <= 0.75, result.metrics


@pytest.mark.slow
def test_checkpoint_reloads_and_scores_identically(learned: Any) -> None:
    from rstar.models.registry import load_reward_model

    pairs = synthetic_pairs(6, seed=5)
    texts = [p + c for p, c in zip(pairs["prefix"], pairs["chosen"], strict=True)]
    texts += [p + r for p, r in zip(pairs["prefix"], pairs["rejected"], strict=True)]
    texts.append("")  # an empty prefix is scored too
    in_memory = HFRewardModel.from_model(learned.model, learned.tokenizer, batch_size=4)
    reloaded = load_reward_model(f"hf:{learned.path}")
    assert isinstance(reloaded, HFRewardModel) and reloaded.model_id == f"hf:{learned.path}"
    a, b = in_memory.score(texts), reloaded.score(texts)
    assert a == pytest.approx(b, abs=1e-6)
    assert all(-1 < x < 1 for x in b)
    assert all(x > y for x, y in zip(b[:6], b[6:12], strict=True))  # prefers adding
    assert reloaded.score(texts) == b  # deterministic
    one_by_one = HFRewardModel(learned.path, batch_size=1).score(texts)
    assert one_by_one == pytest.approx(b, abs=1e-5)  # batch composition does not change a score
    assert reloaded.raw_scores(texts[:1])[0] == pytest.approx(math.atanh(b[0]), abs=1e-5)
    manifest = json.loads((learned.path / MANIFEST).read_text())
    assert manifest["kind"] == "ppm" and manifest["metrics"]["heldout_accuracy"] == learned.metrics["heldout_accuracy"]


@pytest.mark.slow
def test_a_causal_lm_folder_is_not_mistaken_for_a_ppm(base: Path) -> None:
    with pytest.raises(ValueError, match="not a PPM checkpoint"):
        HFRewardModel(base)


@pytest.mark.slow
def test_pairs_longer_than_the_context_are_cut_from_the_left(base: Path, tmp_path: Path) -> None:
    pairs = synthetic_pairs(8)
    long_prefix = pairs.with_columns(pl.col("prefix").str.replace("Tom has", "Tom " + "really " * 60 + "has"))
    huge_step = pairs.head(1).with_columns(
        pl.lit("problem-huge").alias("problem_id"),
        pl.lit("# Step 2: " + "word " * 300 + "\n<end_of_step>\n").alias("chosen"),
    )
    data = pl.concat([pairs, long_prefix.with_columns(pl.col("problem_id") + "-long"), huge_step])
    cfg = TrainConfig.for_ppm(heldout_fraction=0.0, max_steps=1, **(FAST | {"max_length": 160}))  # pairs: ~104 tokens
    result = train_ppm(data, base, tmp_path, cfg)
    m = result.metrics
    assert m["truncated_pairs"] == 8 and m["dropped_step_too_long"] == 1 and m["train_pairs"] == 16
    # scoring cuts the same way and counts it
    ppm = HFRewardModel(tmp_path)
    assert ppm.max_length == 160
    ppm.score([long_prefix["prefix"][0] + long_prefix["chosen"][0], pairs["prefix"][0]])
    assert ppm.truncated == 1


@pytest.mark.slow
def test_pair_weights_scale_the_loss(base: Path, tmp_path: Path) -> None:
    import torch
    from datasets import Dataset
    from torch.nn import functional as F
    from transformers import AutoTokenizer
    from trl import RewardConfig

    from rstar.models.ppm import load_sequence_classifier
    from rstar.train.ppm import _weighted_classes

    trainer_cls, collator_cls = _weighted_classes()
    tok = AutoTokenizer.from_pretrained(base)
    model = load_sequence_classifier(base)
    model.config.pad_token_id = tok.pad_token_id
    examples = [
        {"chosen_ids": tok("a + 1")["input_ids"], "rejected_ids": tok("a - 1 - 2")["input_ids"], "weight": 2.0},
        {"chosen_ids": tok("b + 2")["input_ids"], "rejected_ids": tok("b")["input_ids"], "weight": 0.0},
    ]
    args = RewardConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        report_to="none",
        activation_checkpointing=False,
        per_device_train_batch_size=2,
    )
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tok,
        data_collator=collator_cls(pad_token_id=tok.pad_token_id),
    )
    # the weights survive the trainer's column filtering and reach the loss
    batch = next(iter(trainer.get_train_dataloader()))
    assert sorted(batch["weight"].tolist()) == [0.0, 2.0]
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = rewards[:2], rewards[2:]
    expected = (batch["weight"] * -F.logsigmoid(chosen - rejected)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    unweighted = -F.logsigmoid(chosen - rejected).mean()
    assert float(loss) != pytest.approx(float(unweighted), rel=1e-3)


@pytest.mark.slow
def test_bad_input_and_cli(base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rstar.cli import main

    with pytest.raises(ValueError, match="no preference pairs"):
        train_ppm(synthetic_pairs(3).head(0), base, tmp_path / "x", TrainConfig.for_ppm())
    with pytest.raises(ValueError, match="columns"):
        train_ppm(pl.DataFrame({"prefix": ["a"]}), base, tmp_path / "x", TrainConfig.for_ppm())
    synthetic_pairs(12).write_parquet(tmp_path / "pairs.parquet")
    argv = [
        "train-ppm",
        "--pairs",
        str(tmp_path / "pairs.parquet"),
        "--base",
        f"hf:{base}",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*argv, "--max-steps", "2", "--batch-size", "4", "--heldout-fraction", "0.2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train-ppm:" in out and "held-out accuracy" in out and "2 steps" in out
    assert HFRewardModel(tmp_path / "o").score(["x"])[0] != 0.0

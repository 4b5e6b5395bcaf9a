"""Train the process preference model on step preference pairs with TRL's `RewardTrainer`.

    pairs = pl.read_parquet("runs/r1/data/pairs.parquet")         # rstar.data.pairs.build_pairs output
    result = train_ppm(pairs, policy_path, "runs/r1/ppm", TrainConfig.for_ppm())
    result.metrics["heldout_accuracy"], result.metrics["truncated_pairs"]

- Model: the backbone of `base_path` (the round's policy, or a base model for round 1) as an
  `AutoModelForSequenceClassification` with `num_labels=1`: a fresh linear head on the hidden state of the last
  token; `config.pad_token_id` is set so the head finds that token in padded batches.
- Loss: TRL's pairwise Bradley-Terry loss `-log sigmoid(r(prefix+chosen) - r(prefix+rejected))`. The one extension:
  each pair's loss is weighted by `weight` (1 / (pos_count * neg_count), as in the reference), normalised so the mean
  weight of the training set is 1 (`TrainConfig.use_weights=False` trains unweighted).
- Texts: chosen = prefix + chosen step, rejected = prefix + rejected step, tokenized here (no EOS: the PPM scores a
  prefix exactly as `HFRewardModel.score` does at search time). A text longer than `max_length` is cut from the LEFT
  so the judged step survives (`truncated_pairs` counts them); a pair whose judged step alone does not fit is dropped
  (`dropped_step_too_long`).
- Held-out split: about `heldout_fraction` of the problems (by a hash of the problem id, so the split is the same in
  every round and never mixes one problem's pairs across the split); their pairs are never trained on and give
  `heldout_accuracy` = share of pairs with r(chosen) > r(rejected).
- LoRA (peft) optional, with the head trained in full (`modules_to_save=["score"]`) and merged on save.

The output folder is a PPM checkpoint (`rstar.models.ppm.HFRewardModel` loads it) plus `rstar_train.json`.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from rstar.models.ppm import HFRewardModel, context_length, encode_left, ensure_pad_token, load_sequence_classifier
from rstar.train.common import (
    TrainConfig,
    TrainResult,
    base_manifest,
    digest_rows,
    lora_config,
    loss_history,
    pick_device,
    quiet_trainer,
    set_quiet_logging,
    training_kwargs,
    write_manifest,
)

REQUIRED_COLUMNS = ("problem_id", "prefix", "chosen", "rejected")
# `train_accuracy` is measured on the first this-many training pairs: a fit check (+-3 points at 0.9), not an
# estimate to report. Scoring costs two forward passes per pair, ~0.17 s each for SmolLM2-135M on 2 CPU cores
# (inferred from the PPM task's time outside training in bench/ppm_probe.py), so the former 512 pairs cost ~3 min
# for a PPM trained on ~600 pairs; 128 cost ~45 s.
TRAIN_ACCURACY_SAMPLE = 128


def heldout_problem(problem_id: str, fraction: float) -> bool:
    """Whether a problem belongs to the held-out split: a hash of its id, stable across runs and rounds."""
    h = int(hashlib.sha256(problem_id.encode()).hexdigest()[:12], 16) / float(1 << 48)
    return h < fraction


def split_pairs(pairs: pl.DataFrame, fraction: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, held-out) by problem id. With a fraction > 0 and at least two problems, at least one problem is held
    out and at least one is trained on, whatever the hash gives."""
    if fraction <= 0 or pairs.height == 0:
        return pairs, pairs.head(0)
    ids = sorted(set(pairs["problem_id"].to_list()))
    held = {p for p in ids if heldout_problem(p, fraction)}
    if len(ids) >= 2:
        by_hash = sorted(ids, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
        if not held:
            held = {by_hash[0]}
        if len(held) == len(ids):
            held.discard(by_hash[-1])
    else:
        held = set()
    mask = pl.col("problem_id").is_in(sorted(held))
    return pairs.filter(~mask), pairs.filter(mask)


@dataclass
class EncodedPairs:
    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    weights: list[float]
    kept_rows: list[int]
    truncated: int = 0  # pairs with at least one side cut from the left
    dropped_step_too_long: int = 0


def encode_pairs(tokenizer: Any, pairs: pl.DataFrame, max_length: int) -> EncodedPairs:
    """Tokenize prefix+chosen and prefix+rejected with left truncation; drop pairs whose judged step cannot fit."""
    weights = pairs["weight"].to_list() if "weight" in pairs.columns else [1.0] * pairs.height
    enc = EncodedPairs([], [], [], [])
    for i, (prefix, chosen, rejected) in enumerate(
        zip(pairs["prefix"].to_list(), pairs["chosen"].to_list(), pairs["rejected"].to_list(), strict=True)
    ):
        step_tokens = max(
            len(tokenizer(chosen, add_special_tokens=False)["input_ids"]),
            len(tokenizer(rejected, add_special_tokens=False)["input_ids"]),
        )
        if step_tokens >= max_length:
            enc.dropped_step_too_long += 1
            continue
        c_ids, c_cut = encode_left(tokenizer, prefix + chosen, max_length)
        r_ids, r_cut = encode_left(tokenizer, prefix + rejected, max_length)
        enc.truncated += int(c_cut or r_cut)
        enc.chosen_ids.append(c_ids)
        enc.rejected_ids.append(r_ids)
        enc.weights.append(float(weights[i]) if weights[i] is not None else 1.0)
        enc.kept_rows.append(i)
    return enc


@functools.cache
def _weighted_classes() -> tuple[type, type]:
    """RewardTrainer + collator that carry a per-pair `weight` (built lazily: trl is imported only when training)."""
    import torch
    from torch.nn import functional as F
    from trl import RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    @dataclass
    class WeightedPreferenceCollator(DataCollatorForPreference):
        """TRL's preference collator (chosen rows first, then rejected, right-padded) plus a `weight` tensor."""

        def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            out = super().torch_call(examples)
            out["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples], dtype=torch.float)
            return out

    class WeightedRewardTrainer(RewardTrainer):
        """RewardTrainer whose pairwise loss is a weighted mean: sum_i w_i * -log sigmoid(r_c,i - r_r,i) / n."""

        def _set_signature_columns_if_needed(self) -> None:
            if self._signature_columns is None:
                self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight"]  # type: ignore[assignment]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", None)
            loss, outputs = super().compute_loss(
                model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
            if weight is not None:
                chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
                per_pair = -F.logsigmoid(chosen - rejected)
                loss = (per_pair * weight.to(per_pair.device, per_pair.dtype)).mean()
                coef = getattr(self.args, "center_rewards_coefficient", None)
                if coef is not None:
                    loss = loss + coef * torch.mean((chosen + rejected) ** 2)
            return (loss, outputs) if return_outputs else loss

    return WeightedRewardTrainer, WeightedPreferenceCollator


def pair_accuracy(ppm: HFRewardModel, pairs: pl.DataFrame) -> float | None:
    """Share of pairs where the model scores prefix+chosen strictly above prefix+rejected (None when no pairs)."""
    if pairs.height == 0:
        return None
    prefixes = pairs["prefix"].to_list()
    chosen = ppm.raw_scores([p + c for p, c in zip(prefixes, pairs["chosen"].to_list(), strict=True)])
    rejected = ppm.raw_scores([p + r for p, r in zip(prefixes, pairs["rejected"].to_list(), strict=True)])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / pairs.height


def train_ppm(
    pairs: pl.DataFrame,
    base_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
) -> TrainResult:
    """Train a PPM on preference pairs and save it (model, tokenizer, rstar_train.json) to `out_dir`.

    Raises ValueError when there are no usable training pairs.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer, set_seed
    from trl import RewardConfig

    cfg = config or TrainConfig.for_ppm()
    set_quiet_logging()
    missing = [c for c in REQUIRED_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs lack columns {missing} (expected rstar.data.schema.PAIRS_SCHEMA)")
    pairs = pairs.filter(
        pl.all_horizontal([pl.col(c).is_not_null() for c in REQUIRED_COLUMNS])
        & (pl.col("chosen") != pl.col("rejected"))
    )
    if pairs.height == 0:
        raise ValueError("no preference pairs to train on (no problem had both a correct and a wrong answer)")
    base, out = Path(base_path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg)

    train_df, heldout_df = split_pairs(pairs, cfg.heldout_fraction)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    ensure_pad_token(tokenizer)
    set_seed(cfg.seed)  # the head is initialised at load time
    model = load_sequence_classifier(base)
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    max_length = context_length(model, tokenizer, cfg.max_length)

    enc = encode_pairs(tokenizer, train_df, max_length)
    if not enc.chosen_ids:
        raise ValueError(f"no training pair fits in max_length={max_length} tokens")
    weights = enc.weights if cfg.use_weights else [1.0] * len(enc.weights)
    mean_w = sum(weights) / len(weights)
    weights = [w / mean_w for w in weights] if mean_w > 0 else [1.0] * len(weights)
    dataset = Dataset.from_dict({"chosen_ids": enc.chosen_ids, "rejected_ids": enc.rejected_ids, "weight": weights})

    trainer_cls, collator_cls = _weighted_classes()
    args = RewardConfig(
        **(training_kwargs(cfg, out, device, len(enc.chosen_ids)) | {"max_length": max_length}),
        disable_dropout=True,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        dataset_num_proc=None,
    )
    peft_config = lora_config(cfg, "SEQ_CLS", modules_to_save=["score"]) if cfg.lora else None
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator_cls(pad_token_id=tokenizer.pad_token_id),
        peft_config=peft_config,
    )
    quiet_trainer(trainer, cfg.progress)
    trained: Any = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    output = trainer.train()
    losses = loss_history(trainer.state.log_history)

    trained = trainer.model
    if cfg.lora and cfg.lora_merge:
        trained = trained.merge_and_unload()
    trained.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    trained.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)

    ppm = HFRewardModel.from_model(
        trained, tokenizer, f"hf:{out}", batch_size=max(cfg.batch_size, 8), max_length=max_length
    )
    heldout_kept = heldout_df
    held_enc = encode_pairs(tokenizer, heldout_df, max_length) if heldout_df.height else None
    if held_enc is not None:
        heldout_kept = heldout_df[held_enc.kept_rows]
    train_sample = train_df[enc.kept_rows][:TRAIN_ACCURACY_SAMPLE]
    metrics: dict[str, Any] = {
        "train_pairs": len(enc.chosen_ids),
        "train_problems": train_df["problem_id"].n_unique(),
        "heldout_pairs": heldout_kept.height,
        "heldout_problems": heldout_kept["problem_id"].n_unique() if heldout_kept.height else 0,
        "heldout_accuracy": pair_accuracy(ppm, heldout_kept),
        "train_accuracy": pair_accuracy(ppm, train_sample),
        "truncated_pairs": enc.truncated + (held_enc.truncated if held_enc else 0),
        "dropped_step_too_long": enc.dropped_step_too_long + (held_enc.dropped_step_too_long if held_enc else 0),
        "max_length": max_length,
        "steps": int(trainer.state.global_step),
        "train_loss": float(output.training_loss),
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "trainable_params": int(trainable),
        "runtime_s": round(float(output.metrics.get("train_runtime", 0.0)), 3),
        "lora": cfg.lora,
    }
    cols = ["problem_id", "prefix", "chosen", "rejected", "weight"]
    manifest = base_manifest(
        "ppm",
        base,
        base,
        cfg,
        device,
        {
            "rows": pairs.height,
            "digest": digest_rows(pairs.select([c for c in cols if c in pairs.columns]).to_dicts(), cols),
            "heldout_problems": heldout_df["problem_id"].n_unique(),
            "heldout_digest": digest_rows(
                ({"problem_id": p} for p in sorted(set(heldout_df["problem_id"].to_list()))), ["problem_id"]
            ),
        },
    )
    manifest["metrics"] = metrics
    write_manifest(out, manifest)
    return TrainResult(path=out, metrics=metrics, manifest=manifest, model=trained, tokenizer=tokenizer)

"""Supervised fine-tuning of the policy on step-verified trajectories, with TRL's `SFTTrainer`.

    sft = pl.read_parquet("runs/r1/data/sft.parquet")             # rstar.data.sft.build_sft output
    result = train_policy(sft, base_path, "runs/r1/policy", TrainConfig(learning_rate=1e-5))
    result.path, result.metrics["losses"]

- Data: a prompt-completion dataset (`prompt` = build_prompt(question), `completion` = the steps); the loss covers
  the completion only (`completion_only_loss=True`), and EOS is appended after the completion so the policy learns to
  stop after `<end_of_answer>`. The step delimiters are plain text, tokenized exactly as at generation time: no
  special tokens are added and no embedding matrix is resized.
- Examples longer than `max_length` are dropped by default (TRL would cut their ending, teaching the policy
  unfinished solutions without EOS) and counted in the metrics.
- Full fine-tuning by default; `TrainConfig(lora=True)` trains LoRA adapters (peft) and, by default, merges them
  into the saved model so any `hf:` loader reads it.
- The paper re-trains from the base model every round: pass the base as `base_path`. To continue from the previous
  round's policy instead, pass it as `init_from` (the manifest records both).
- CPU: fp32, no gradient checkpointing, `use_cpu=True`; GPU: bf16 when supported (`rstar.train.common.pick_device`).

The output folder holds the model and tokenizer (`save_pretrained`) and `rstar_train.json` (config, data digest,
base, metrics).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import polars as pl

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

REQUIRED_COLUMNS = ("prompt", "completion")


def _check_data(data: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in REQUIRED_COLUMNS if c not in data.columns]
    if missing:
        raise ValueError(f"SFT data lacks columns {missing} (expected rstar.data.schema.SFT_SCHEMA)")
    data = data.filter(pl.col("prompt").is_not_null() & pl.col("completion").is_not_null())
    data = data.filter(pl.col("completion").str.len_chars() > 0)
    if data.height == 0:
        raise ValueError("SFT data is empty: no problem had a correct trajectory (nothing to train on)")
    return data


def token_lengths(tokenizer: Any, prompts: list[str], completions: list[str]) -> list[int]:
    """Tokens of prompt + completion + EOS per example, as the trainer will see them."""
    eos = tokenizer.eos_token or ""
    texts = [p + c + eos for p, c in zip(prompts, completions, strict=True)]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def train_policy(
    data: pl.DataFrame,
    base_path: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Fine-tune a causal LM on SFT rows and save it (model, tokenizer, rstar_train.json) to `out_dir`.

    `base_path` is the round's base model; `init_from` (optional) a checkpoint to continue from instead.
    Raises ValueError on empty data or when every example is longer than `max_length`.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    cfg = config or TrainConfig()
    set_quiet_logging()
    base, init = Path(base_path), Path(init_from) if init_from is not None else Path(base_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _check_data(data)
    device = pick_device(cfg)

    tokenizer = AutoTokenizer.from_pretrained(str(init))
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer of {init} has no EOS token; the policy could never learn to stop")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(str(init), dtype=torch.float32)
    max_length = min(cfg.max_length, getattr(model.config.get_text_config(), "max_position_embeddings", cfg.max_length))

    prompts, completions = data["prompt"].to_list(), data["completion"].to_list()
    lengths = token_lengths(tokenizer, prompts, completions)
    keep = [n <= max_length for n in lengths]
    overlong = keep.count(False)
    if cfg.drop_overlong and overlong:
        data = data.filter(pl.Series(keep))
        if data.height == 0:
            raise ValueError(f"every SFT example is longer than max_length={max_length} tokens")
        prompts, completions = data["prompt"].to_list(), data["completion"].to_list()
        lengths = [n for n, k in zip(lengths, keep, strict=True) if k]
    dataset = Dataset.from_dict({"prompt": prompts, "completion": completions})

    args = SFTConfig(
        **(training_kwargs(cfg, out, device, len(prompts)) | {"max_length": max_length}),
        completion_only_loss=True,
        packing=False,
        eos_token=tokenizer.eos_token,
        dataset_num_proc=None,
    )
    peft_config = lora_config(cfg, "CAUSAL_LM") if cfg.lora else None
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    quiet_trainer(trainer, cfg.progress)
    trained: Any = trainer.model
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    output = trainer.train()
    losses = loss_history(trainer.state.log_history)

    trained = trainer.model
    if cfg.lora and cfg.lora_merge:
        trained = trained.merge_and_unload()
    trained.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)

    metrics: dict[str, Any] = {
        "examples": len(prompts),
        "dropped_overlong": overlong if cfg.drop_overlong else 0,
        "truncated_overlong": 0 if cfg.drop_overlong else overlong,
        "max_length": max_length,
        "tokens": sum(lengths),
        "steps": int(trainer.state.global_step),
        "train_loss": float(output.training_loss),
        "losses": losses,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "trainable_params": int(trainable),
        "runtime_s": round(float(output.metrics.get("train_runtime", 0.0)), 3),
        "lora": cfg.lora,
    }
    rows = data.select([c for c in ("problem_id", "prompt", "completion") if c in data.columns]).to_dicts()
    manifest = base_manifest(
        "policy",
        base,
        init,
        cfg,
        device,
        {
            "rows": len(rows),
            "digest": digest_rows(rows, ["problem_id", "prompt", "completion"]),
            "problems": data["problem_id"].n_unique() if "problem_id" in data.columns else None,
        },
    )
    manifest["metrics"] = metrics
    write_manifest(out, manifest)
    return TrainResult(path=out, metrics=metrics, manifest=manifest, model=trained, tokenizer=tokenizer)

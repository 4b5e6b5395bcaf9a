"""`rstar train-policy` and `rstar train-ppm`: fine-tune the policy on SFT rows, train the PPM on preference pairs.

    rstar train-policy --data runs/r1/data/sft.parquet --base smollm2-135m --out runs/r1/policy [--lr 1e-5]
    rstar train-ppm --pairs runs/r1/data/pairs.parquet --base hf:runs/r1/policy --out runs/r1/ppm

`--base` is a model spec (`hf:PATH`, `tiny:SEED`, `smollm2-135m`; see rstar.models.registry). The policy is
re-trained from `--base` each round (the paper); `--init-from SPEC` continues from an earlier checkpoint instead. Each
command shows the trainer's progress bar and prints a summary; the folder holds the model, its tokenizer and
`rstar_train.json`. Library entry points: `rstar.train.policy.train_policy`, `rstar.train.ppm.train_ppm`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# CLI flag -> TrainConfig field, for the options both commands share.
COMMON_OPTIONS: dict[str, tuple[str, type, str]] = {
    "lr": ("learning_rate", float, "peak learning rate (paper: 7e-6 for 7B models)"),
    "epochs": ("num_epochs", float, "epochs over the data"),
    "batch_size": ("batch_size", int, "per-device batch size"),
    "grad_accum": ("grad_accum", int, "gradient accumulation steps"),
    "max_length": ("max_length", int, "max tokens per sequence"),
    "warmup": ("warmup", float, "warm-up ratio (< 1) or steps"),
    "weight_decay": ("weight_decay", float, "AdamW weight decay"),
    "scheduler": ("lr_scheduler", str, "LR scheduler (linear, cosine, constant, ...)"),
    "seed": ("seed", int, "random seed"),
    "max_steps": ("max_steps", int, "stop after N optimizer steps"),
    "lora_r": ("lora_r", int, "LoRA rank (with --lora)"),
    "lora_alpha": ("lora_alpha", int, "LoRA alpha (with --lora)"),
    "lora_targets": ("lora_target_modules", str, "LoRA target modules, comma-separated or all-linear"),
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, metavar="SPEC", help="base model spec: hf:PATH, tiny:SEED, smollm2-135m")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (model, tokenizer, rstar_train.json)")
    for flag, (_, typ, help_) in COMMON_OPTIONS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None, help=help_)
    p.add_argument("--lora", action="store_true", help="train LoRA adapters instead of all weights")
    p.add_argument("--no-merge", action="store_true", help="with --lora: keep adapters unmerged (peft folder)")
    p.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-policy",
        help="fine-tune the policy on SFT rows (TRL SFTTrainer, completion-only loss)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="SFT.parquet", help="SFT rows (rstar build-data's sft.parquet)")
    _add_common(p)
    p.add_argument("--init-from", metavar="SPEC", help="continue from this checkpoint instead of re-training --base")
    p.add_argument("--keep-overlong", action="store_true", help="cut examples longer than --max-length, not drop")
    p.set_defaults(func=run)

    q = subparsers.add_parser(
        "train-ppm",
        help="train the process preference model on step preference pairs (TRL RewardTrainer)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--pairs", required=True, metavar="PAIRS.parquet", help="pairs (rstar build-data's pairs.parquet)")
    _add_common(q)
    q.add_argument("--heldout-fraction", type=float, default=None, help="share of problems held out (default 0.05)")
    q.add_argument("--no-weights", action="store_true", help="ignore the per-pair weights")
    q.set_defaults(func=run)


def _config(args: argparse.Namespace, ppm: bool) -> Any:
    from rstar.train.common import TrainConfig

    overrides: dict[str, Any] = {
        field: getattr(args, flag) for flag, (field, _, _) in COMMON_OPTIONS.items() if getattr(args, flag) is not None
    }
    overrides |= {"lora": args.lora, "lora_merge": not args.no_merge, "cpu": args.cpu, "progress": not args.quiet}
    if ppm:
        if args.heldout_fraction is not None:
            overrides["heldout_fraction"] = args.heldout_fraction
        overrides["use_weights"] = not args.no_weights
        return TrainConfig.for_ppm(**overrides)
    overrides["drop_overlong"] = not args.keep_overlong
    return TrainConfig(**overrides)


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def run(args: argparse.Namespace) -> int:
    import polars as pl

    from rstar.models.registry import ModelSpecError, resolve_local_model

    ppm = args.command == "train-ppm"
    name = "train-ppm" if ppm else "train-policy"
    try:
        cfg = _config(args, ppm)
        data_path = args.pairs if ppm else args.data
        data = pl.read_parquet(data_path)
        base = resolve_local_model(args.base)
        if ppm:
            from rstar.train.ppm import train_ppm

            result = train_ppm(data, base, args.out, cfg)
        else:
            from rstar.train.policy import train_policy

            init = resolve_local_model(args.init_from) if args.init_from else None
            result = train_policy(data, base, args.out, cfg, init_from=init)
    except (ModelSpecError, FileNotFoundError, ValueError, pl.exceptions.PolarsError) as exc:
        print(f"rstar {name}: error: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    if ppm:
        print(
            f"{name}: {m['train_pairs']} pairs ({m['train_problems']} problems), {m['steps']} steps, "
            f"loss {_fmt(m['first_loss'])} -> {_fmt(m['last_loss'])}, held-out accuracy "
            f"{_fmt(m['heldout_accuracy'])} on {m['heldout_pairs']} pairs ({m['heldout_problems']} problems), "
            f"{m['truncated_pairs']} pairs cut from the left, {m['dropped_step_too_long']} dropped (step too long), "
            f"{_fmt(m['runtime_s'])} s -> {result.path}"
        )
    else:
        print(
            f"{name}: {m['examples']} examples, {m['steps']} steps, loss {_fmt(m['first_loss'])} -> "
            f"{_fmt(m['last_loss'])}, {m['dropped_overlong']} dropped / {m['truncated_overlong']} cut "
            f"(longer than {m['max_length']} tokens), {_fmt(m['runtime_s'])} s -> {result.path}"
        )
    return 0

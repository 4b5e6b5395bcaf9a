"""What policy SFT and PPM training share: the config, the result, device choice, data digests, the run manifest.

    cfg = TrainConfig(learning_rate=1e-5, num_epochs=2)          # policy defaults follow the paper
    cfg = TrainConfig.for_ppm(batch_size=8)                      # PPM defaults: 1 epoch, 5% held out
    result = train_policy(sft_df, base_path, out_dir, cfg)       # -> TrainResult (rstar.train.policy)

Every trained folder holds the model and tokenizer (`save_pretrained`) and `rstar_train.json`: what was trained
(`kind`), from which model, with which config, on which data (a SHA-256 over the rows that were used), with which
library versions, and the resulting metrics. Re-running with the same inputs and seed reproduces the same weights on
the same hardware.

torch / transformers are imported inside functions only (tests/unit/test_architecture.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MANIFEST = "rstar_train.json"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters for `train_policy` and `train_ppm` (paper values where they make sense at small scale)."""

    learning_rate: float = field(default=7e-6, metadata={"help": "peak LR; the paper's 7e-6 is for 7B models"})
    num_epochs: float = field(default=2.0, metadata={"help": "epochs over the data (paper: SFT 2, PPM 1)"})
    batch_size: int = field(default=4, metadata={"help": "per-device batch size (pairs for the PPM)"})
    grad_accum: int = field(default=1, metadata={"help": "gradient accumulation steps (paper batch 128 / 512)"})
    max_length: int = field(default=2048, metadata={"help": "max tokens per sequence (capped by the model's context)"})
    warmup: float = field(default=0.0, metadata={"help": "warm-up: a ratio of all steps if < 1, else a step count"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (paper 0.1)"})
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name (paper: linear)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    seed: int = field(default=0, metadata={"help": "seed for data order, dropout and the PPM head's init"})
    max_steps: int = field(
        default=-1,
        metadata={"help": "at most this many optimizer steps: a cap on the epochs, never a repeat (-1: none)"},
    )
    logging_steps: int = field(default=1, metadata={"help": "log the loss every N steps"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) instead of all weights"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "comma-separated module names, or 'all-linear'"}
    )
    lora_merge: bool = field(default=True, metadata={"help": "merge the adapters into the saved model"})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 mixed precision; None: on when a GPU has it"})
    gradient_checkpointing: bool | None = field(default=None, metadata={"help": "None: on for GPU, off on CPU"})
    cpu: bool = field(default=False, metadata={"help": "train on CPU even when a GPU is present"})
    drop_overlong: bool = field(
        default=True,
        metadata={"help": "policy: drop examples longer than max_length instead of cutting off their ending"},
    )
    progress: bool = field(default=False, metadata={"help": "show a progress bar on stderr"})
    # PPM only
    heldout_fraction: float = field(default=0.05, metadata={"help": "PPM: share of problems held out for accuracy"})
    use_weights: bool = field(default=True, metadata={"help": "PPM: weight each pair by 1/(pos_count*neg_count)"})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "PPM: penalty on mean-squared rewards (keeps scores near 0 before tanh)"}
    )

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.num_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("num_epochs must be > 0 (or max_steps > 0)")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.max_length < 8:
            raise ValueError("max_length must be >= 8")
        if self.warmup < 0:
            raise ValueError("warmup must be >= 0")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError("heldout_fraction must be in [0, 1)")
        if self.lora and self.lora_r < 1:
            raise ValueError("lora_r must be >= 1")

    @classmethod
    def for_ppm(cls, **overrides: Any) -> TrainConfig:
        """PPM defaults (paper: 1 epoch, lr 7e-6; 5% held out), with overrides."""
        return replace(cls(num_epochs=1.0), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass
class TrainResult:
    """What a training run produced: the saved folder and its metrics (losses, accuracy, counts, runtime).

    `model` / `tokenizer` are the trained objects still in memory (what was saved), for callers that go on using them
    in-process; they are not part of the result's data.
    """

    path: Path
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    model: Any = field(default=None, repr=False, compare=False)
    tokenizer: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Device:
    use_cpu: bool
    bf16: bool
    gradient_checkpointing: bool
    name: str


def pick_device(cfg: TrainConfig) -> Device:
    """CPU: fp32, no checkpointing, use_cpu=True (TRL needs all three there). GPU: bf16 when supported."""
    import torch

    gpu = torch.cuda.is_available() and not cfg.cpu
    if not gpu:
        return Device(use_cpu=True, bf16=False, gradient_checkpointing=False, name="cpu")
    bf16 = torch.cuda.is_bf16_supported() if cfg.bf16 is None else cfg.bf16
    gc = True if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    return Device(use_cpu=False, bf16=bf16, gradient_checkpointing=gc, name=torch.cuda.get_device_name(0))


def optimizer_steps(cfg: TrainConfig, n_examples: int) -> int:
    """The number of optimizer steps a run takes: the epochs' steps, capped by `max_steps` when that is set.

    transformers' own `max_steps` *replaces* the epochs (and loops over the data again when it is the larger); ours
    is a cap, so a small round never trains on its few examples more often than `num_epochs` says.
    """
    if cfg.num_epochs <= 0:  # only a step count was given
        return cfg.max_steps
    per_epoch = math.ceil(math.ceil(n_examples / cfg.batch_size) / cfg.grad_accum)
    steps = max(1, math.ceil(per_epoch * cfg.num_epochs))
    return min(steps, cfg.max_steps) if cfg.max_steps > 0 else steps


def warmup_steps(cfg: TrainConfig, steps: int) -> int:
    """Warm-up steps for a run of `steps` optimizer steps: `warmup` as a ratio (< 1) or a count, at most (steps-1)//2.

    The schedule's first step runs at learning rate 0 whenever there is any warm-up, so a one-step round with a 10%
    warm-up (ceil(0.1 x 1) = 1 step) would train nothing at all and silently return its input model; the cap keeps
    at least half of a short run at full schedule and turns warm-up off below three steps.
    """
    wanted = math.ceil(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    return max(0, min(wanted, (steps - 1) // 2))


def training_kwargs(cfg: TrainConfig, out_dir: Path, device: Device, n_examples: int) -> dict[str, Any]:
    """Keyword arguments shared by SFTConfig and RewardConfig (both TrainingArguments)."""
    steps = optimizer_steps(cfg, n_examples)
    return {
        "output_dir": str(out_dir / "_trainer"),
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.num_epochs,
        "max_steps": steps,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "warmup_steps": warmup_steps(cfg, steps),
        "weight_decay": cfg.weight_decay,
        "lr_scheduler_type": cfg.lr_scheduler,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": not cfg.progress,
        "use_cpu": device.use_cpu,
        "bf16": device.bf16,
        "fp16": False,
        "activation_checkpointing": device.gradient_checkpointing,
        "dataloader_num_workers": 0,
        "max_length": cfg.max_length,
    }


def lora_config(cfg: TrainConfig, task_type: str, modules_to_save: list[str] | None = None):  # -> peft.LoraConfig
    from peft import LoraConfig

    targets: str | list[str] = cfg.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in str(targets).split(",") if t.strip()]
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )


def digest_rows(rows: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> str:
    """SHA-256 over the given columns of every row, in order: names exactly the data a model was trained on."""
    cols = list(columns)
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.get(c) for c in cols], ensure_ascii=False, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def loss_history(log_history: list[dict[str, Any]]) -> list[float]:
    """The training losses the trainer logged, in step order."""
    return [float(h["loss"]) for h in log_history if "loss" in h and "train_runtime" not in h]


def write_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> Path:
    path = Path(out_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def read_manifest(model_dir: str | Path) -> dict[str, Any] | None:
    path = Path(model_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def base_manifest(
    kind: str, base_path: Path, init_path: Path, cfg: TrainConfig, device: Device, data: Mapping[str, Any]
) -> dict[str, Any]:
    parent = read_manifest(init_path)
    return {
        "kind": kind,
        "base": str(base_path),
        "init_from": str(init_path),
        "init_manifest_data": (parent or {}).get("data"),
        "config": cfg.to_dict(),
        "data": dict(data),
        "device": asdict(device),
        "versions": library_versions(),
        "created_unix": int(time.time()),
    }


def quiet_trainer(trainer: Any, progress: bool) -> None:
    """Without a progress bar, transformers prints every log dict to stdout: drop that printer (metrics are kept in
    `trainer.state.log_history`)."""
    from transformers.trainer_callback import PrinterCallback

    if not progress:
        trainer.remove_callback(PrinterCallback)


def set_quiet_logging() -> None:
    """Keep transformers / datasets from printing per-map progress bars and load reports into our output."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass

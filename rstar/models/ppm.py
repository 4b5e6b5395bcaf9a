"""The process preference model (PPM) at inference: a transformer backbone with a scalar head on the last token.

A PPM checkpoint is a transformers `AutoModelForSequenceClassification` folder with `num_labels=1` (trained by
`rstar.train.ppm.train_ppm`, which TRL's `RewardTrainer` drives). The head reads the hidden state of the last non-pad
token of `prompt + steps so far`; training pushes r(prefix + good step) above r(prefix + bad step). At inference the
raw score is mapped into (-1, 1) with `tanh(r / temperature)` so MCTS can use it as a Q-value prior.

    ppm = HFRewardModel("runs/r2/ppm", model_id="hf:runs/r2/ppm")      # what rstar.models.registry builds
    values = ppm.score([prefix_1, prefix_2])                            # list[float] in (-1, 1)

Text longer than the context is cut from the LEFT (the end, i.e. the step being judged, is what matters), exactly as
in training (`encode_left` is shared); `truncated` counts how often that happened. Scoring is batched (sorted by length
to pad little), runs without gradients in eval mode, and is deterministic for a given input list.

torch / transformers are imported inside functions only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def encode_left(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of `text`, keeping the LAST `max_length` tokens (and a leading BOS when the tokenizer adds one).

    Returns (ids, truncated). Training and inference both use this, so a long prefix is cut the same way in both.
    """
    ids: list[int] = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_length:
        return ids, False
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids and ids[0] == bos:
        return [bos, *ids[len(ids) - (max_length - 1) :]], True
    return ids[len(ids) - max_length :], True


def context_length(model: Any, tokenizer: Any, requested: int | None = None) -> int:
    """The usable sequence length: `requested`, capped by the model's positions and the tokenizer's limit."""
    limits = [requested or 4096]
    cfg = getattr(model, "config", None)
    text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    mpe = getattr(text_cfg, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe > 0:
        limits.append(mpe)
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 10**7:
        limits.append(tml)
    return min(limits)


def ensure_pad_token(tokenizer: Any) -> None:
    """Sequence-classification heads find the last token by the pad id: fall back to EOS when there is no pad."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


def load_sequence_classifier(path: str | Path, *, dtype: Any = None, device: Any = None) -> Any:
    """`AutoModelForSequenceClassification` with one label, from a PPM checkpoint or (for training) a causal LM
    checkpoint, whose head is then freshly initialised (seed first for a reproducible head)."""
    import contextlib

    import torch
    from transformers import AutoModelForSequenceClassification

    quiet: Any = contextlib.nullcontext()
    if not is_ppm_checkpoint(path):  # a causal LM: its lm_head is unused and the score head is new (expected)
        from trl.trainer.reward_trainer import suppress_seqcls_warning

        quiet = suppress_seqcls_warning()
    with quiet:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, dtype=dtype or torch.float32
        )
    if device is not None:
        model = model.to(device)
    return model


def is_ppm_checkpoint(path: str | Path) -> bool:
    """True when the folder's config names a sequence-classification architecture."""
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return False
    archs = json.loads(cfg.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


class HFRewardModel:
    """A PPM checkpoint behind the `RewardModel` protocol (`rstar.types`).

    Args: `path` a PPM folder; `model_id` the spec string naming it; `device` ("cpu", "cuda", ...; default: CUDA when
    available); `batch_size` prefixes per forward pass; `max_length` tokens kept per prefix (default: the training
    max_length from `rstar_train.json`, capped by the model's context); `dtype` (a name like "float32" or a torch
    dtype; default bf16 on CUDA, fp32 on CPU);
    `temperature` divides the raw score before tanh; `allow_untrained_head` loads a plain causal LM with a random head
    (for tests / ablations only).
    """

    def __init__(
        self,
        path: str | Path,
        model_id: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        dtype: Any = None,
        temperature: float = 1.0,
        allow_untrained_head: bool = False,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"PPM folder not found: {path}")
        if not allow_untrained_head and not is_ppm_checkpoint(path):
            raise ValueError(
                f"{path} is not a PPM checkpoint (its config names no *ForSequenceClassification architecture); "
                "train one with `rstar train-ppm`"
            )
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            torch_dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        else:
            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = load_sequence_classifier(path, dtype=torch_dtype, device=dev)
        if max_length is None:
            manifest = path / "rstar_train.json"
            if manifest.exists():
                max_length = json.loads(manifest.read_text()).get("config", {}).get("max_length")
        self._init(model, tokenizer, model_id or f"hf:{path}", batch_size, max_length, temperature)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        model_id: str = "in-memory",
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        temperature: float = 1.0,
    ) -> HFRewardModel:
        """Wrap an already-loaded sequence-classification model (used after training to measure accuracy)."""
        self = cls.__new__(cls)
        self._init(model, tokenizer, model_id, batch_size, max_length, temperature)
        return self

    def _init(
        self, model: Any, tokenizer: Any, model_id: str, batch_size: int, max_length: int | None, temperature: float
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        ensure_pad_token(tokenizer)
        model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self._model_id = model_id
        self.batch_size = batch_size
        self.max_length = context_length(model, tokenizer, max_length)
        self.temperature = temperature
        self.truncated = 0  # prefixes cut from the left so far

    @property
    def model_id(self) -> str:
        return self._model_id

    def raw_scores(self, texts: Sequence[str]) -> list[float]:
        """The head's raw outputs (before tanh), one per text, in input order."""
        import torch

        if not texts:
            return []
        encoded = []
        for t in texts:
            ids, cut = encode_left(self.tokenizer, t, self.max_length)
            if not ids:  # an empty text still needs one token to read a hidden state from
                ids = [
                    self.tokenizer.pad_token_id if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id
                ]
            self.truncated += int(cut)
            encoded.append(ids)
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        out = [0.0] * len(encoded)
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                width = max(len(encoded[i]) for i in idx)
                input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(encoded[i])
                    input_ids[row, :n] = torch.tensor(encoded[i], dtype=torch.long)
                    mask[row, :n] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                for row, i in enumerate(idx):
                    out[i] = float(logits[row, 0].float().item())
        return out

    def score(self, prefixes: Sequence[str]) -> list[float]:
        """PPM values in (-1, 1): tanh(raw / temperature) for each prefix, in input order."""
        return [math.tanh(r / self.temperature) for r in self.raw_scores(prefixes)]

"""Resolve model spec strings into policies and reward models (see docs/architecture.md, "Model specs").

    policy = load_policy("hf:/path/to/checkpoint")
    policy = load_policy("smollm2-135m")
    policy = load_policy("openai:http://gpu-node:8000/v1#Qwen2.5-Math-7B")
    policy = load_policy("fake:random-int?max=20")
    ppm = load_reward_model("hf:/path/to/ppm")

Each backend module is imported only when its spec is used, so resolving a `fake:` spec never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rstar.types import PolicyLM, RewardModel


class ModelSpecError(ValueError):
    """A model spec string that names no known backend, or a backend that cannot be reached / loaded."""


@dataclass(frozen=True)
class ModelSpec:
    backend: str  # "hf" | "openai" | "fake" | "smollm2-135m" | "tiny"
    target: str  # path, URL#model, fake name, seed

    def __str__(self) -> str:
        return f"{self.backend}:{self.target}" if self.target else self.backend


BUILTIN_SOURCES = ("smollm2-135m", "tiny")


def rstar_home() -> Path:
    """Where caches and embedded state live: $RSTAR_HOME, default ./.rstar."""
    return Path(os.environ.get("RSTAR_HOME", ".rstar")).absolute()


def parse_spec(spec: str) -> ModelSpec:
    spec = spec.strip()
    if not spec:
        raise ModelSpecError("empty model spec")
    head, sep, tail = spec.partition(":")
    if head in BUILTIN_SOURCES:
        return ModelSpec(head, tail)
    if not sep:
        if Path(spec).exists():  # a bare local folder means hf:
            return ModelSpec("hf", spec)
        raise ModelSpecError(
            f"unknown model spec {spec!r}: use hf:PATH, openai:URL#MODEL, fake:NAME, smollm2-135m or tiny[:SEED]"
        )
    if head not in ("hf", "openai", "fake"):
        raise ModelSpecError(f"unknown model backend {head!r} in {spec!r} (hf, openai, fake, smollm2-135m, tiny)")
    if not tail:
        raise ModelSpecError(f"model spec {spec!r} names no model after '{head}:'")
    return ModelSpec(head, tail)


def resolve_local_model(spec: str | ModelSpec) -> Path:
    """The local folder of an in-process model spec (hf:, smollm2-135m, tiny), building or converting it if needed."""
    ms = parse_spec(spec) if isinstance(spec, str) else spec
    if ms.backend == "hf":
        path = Path(ms.target).expanduser()
        if not path.exists():
            raise ModelSpecError(f"model folder not found: {path}")
        return path
    if ms.backend == "smollm2-135m":
        from rstar.models.smollm2 import ensure_smollm2

        return ensure_smollm2(rstar_home() / "models" / "smollm2-135m")
    if ms.backend == "tiny":
        from rstar.models.tiny import TinyModelConfig, build_tiny_model

        seed = int(ms.target or 0)
        return build_tiny_model(rstar_home() / "models" / f"tiny-{seed}", TinyModelConfig(seed=seed))
    raise ModelSpecError(f"{ms} is not an in-process model")


def load_policy(spec: str, **kwargs: Any) -> PolicyLM:
    """A `PolicyLM` for a spec string; `kwargs` go to the backend (device, dtype, max_batch_size, ...)."""
    ms = parse_spec(spec)
    if ms.backend == "fake":
        from rstar.models.fakes import make_fake_policy

        return make_fake_policy(ms.target)
    if ms.backend == "openai":
        from rstar.models.policy_openai import OpenAIPolicy

        url, _, model = ms.target.partition("#")
        return OpenAIPolicy(base_url=url, model=model or None, **kwargs)
    from rstar.models.policy_hf import HFPolicy

    return HFPolicy(resolve_local_model(ms), model_id=str(ms), **kwargs)


def load_reward_model(spec: str | None, **kwargs: Any) -> RewardModel | None:
    """A `RewardModel` (PPM) for a spec string; None for None / "" / "none"."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    ms = parse_spec(spec)
    if ms.backend == "fake":
        from rstar.models.fakes import make_fake_reward_model

        return make_fake_reward_model(ms.target)
    if ms.backend == "openai":
        raise ModelSpecError("a PPM served over HTTP is not supported yet; use hf:PATH for the PPM")
    from rstar.models.ppm import HFRewardModel

    return HFRewardModel(resolve_local_model(ms), model_id=str(ms), **kwargs)

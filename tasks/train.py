"""Stage 4: train the round's policy (SFT) and PPM (pairwise preference), each a model-folder artifact.

    policy = train_policy_task(sft_ref, base="tiny:0", config={"epochs": 2}, seed=0, round_idx=2)
    ppm = train_ppm_task(pairs_ref, base=policy.uri, config={"epochs": 1}, seed=0, round_idx=2)

The artifact (`rounds/<k>/policy/<digest>`, `rounds/<k>/ppm/<digest>`) holds the `save_pretrained` folder under
`model/`; the next round names it by URI and `tasks.common.resolve_model` turns that URI into `hf:<local copy>`.
Training samples (data order, dropout, init of the PPM head), so the seed is an input and part of the cache key.
The base model is identified by its artifact digest when it is an artifact, by its spec otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from infra.storage import ArtifactRef
from tasks.build_data import PAIRS_FILE, SFT_FILE
from tasks.common import (
    DETERMINISTIC,
    MODEL_SUBDIR,
    StageOutput,
    materialize,
    model_identity,
    resolve_model,
    retry_on_transient,
)


def _metrics(result: Any) -> dict[str, float]:
    raw = getattr(result, "metrics", None) or {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def base_path(base: str) -> Path:
    """The local folder of a base model source (artifact URI, `hf:PATH`, `tiny:SEED`, `smollm2-135m`)."""
    from rstar.models.registry import resolve_local_model

    return resolve_local_model(resolve_model(base) or base)


def run_train_policy(sft_dir: Path, out: Path, base: str, config: dict[str, Any], seed: int) -> StageOutput:
    """One `rstar.train.policy.train_policy` call on the SFT rows; the model lands in `out/model`."""
    import polars as pl

    from rstar.train.common import TrainConfig
    from rstar.train.policy import train_policy

    data = pl.read_parquet(sft_dir / SFT_FILE)
    result = train_policy(data, base_path(base), out / MODEL_SUBDIR, TrainConfig(**{**config, "seed": seed}))
    return StageOutput(rows=data.height, metrics=_metrics(result))


def run_train_ppm(pairs_dir: Path, out: Path, base: str, config: dict[str, Any], seed: int) -> StageOutput:
    """One `rstar.train.ppm.train_ppm` call on the preference pairs; the model lands in `out/model`."""
    import polars as pl

    from rstar.train.common import TrainConfig
    from rstar.train.ppm import train_ppm

    data = pl.read_parquet(pairs_dir / PAIRS_FILE)
    result = train_ppm(data, base_path(base), out / MODEL_SUBDIR, TrainConfig.for_ppm(**{**config, "seed": seed}))
    return StageOutput(rows=data.height, metrics=_metrics(result))


def train_policy_fn(
    sft: ArtifactRef, base: str, config: dict[str, Any], seed: int, round_idx: int, parent_run_id: str | None = None
) -> ArtifactRef:
    return materialize(
        stage="policy",
        round_idx=round_idx,
        parents={"sft": sft},
        config={"train": dict(config), "seed": seed},
        models={"base": model_identity(base)},
        build=lambda out, inputs: run_train_policy(inputs["sft"], out, base, config, seed),
        parent_run_id=parent_run_id,
        run_name=f"train-policy-r{round_idx}",
    )


def train_ppm_fn(
    pairs: ArtifactRef, base: str, config: dict[str, Any], seed: int, round_idx: int, parent_run_id: str | None = None
) -> ArtifactRef:
    return materialize(
        stage="ppm",
        round_idx=round_idx,
        parents={"pairs": pairs},
        config={"train": dict(config), "seed": seed},
        models={"base": model_identity(base)},
        build=lambda out, inputs: run_train_ppm(inputs["pairs"], out, base, config, seed),
        parent_run_id=parent_run_id,
        run_name=f"train-ppm-r{round_idx}",
    )


@task(
    name="train-policy",
    task_run_name="train-policy-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=retry_on_transient,
)
def train_policy_task(
    sft: ArtifactRef, base: str, config: dict[str, Any], seed: int, round_idx: int, parent_run_id: str | None = None
) -> ArtifactRef:
    """Fine-tune `base` on the round's SFT rows; returns the policy model artifact."""
    return train_policy_fn(sft, base, config, seed, round_idx, parent_run_id)


@task(
    name="train-ppm",
    task_run_name="train-ppm-r{round_idx}",
    cache_policy=DETERMINISTIC,
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=retry_on_transient,
)
def train_ppm_task(
    pairs: ArtifactRef, base: str, config: dict[str, Any], seed: int, round_idx: int, parent_run_id: str | None = None
) -> ArtifactRef:
    """Train the PPM on the round's preference pairs from the `base` backbone; returns the PPM model artifact."""
    return train_ppm_fn(pairs, base, config, seed, round_idx, parent_run_id)

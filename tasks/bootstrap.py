"""Round 0: the bootstrap policy, fine-tuned on a small seed SFT set before round 1.

The paper bootstraps round 1 with a 236B model that already writes code-augmented steps. Where no such model is at
hand (a CPU machine, an air-gapped cluster), a few hundred worked solutions in our step format do the same job: a
short SFT teaches the small base model the format, and MCTS then does the rest. This stage ingests such a set
(JSONL / JSON / Parquet with `prompt` and `completion`, e.g. `seed_sft.jsonl` from `rstar world`) as a content-addressed
SFT artifact under `rounds/0/`; `train_policy_task(..., round_idx=0)` then trains the bootstrap policy from it.

    sft = ingest_seed_sft("out/world/seed_sft.jsonl")
    boot = train_policy_task(sft, base="smollm2-135m", config={...}, seed=0, round_idx=0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from infra.storage import ArtifactRef, content_digest
from tasks.build_data import SFT_FILE
from tasks.common import DETERMINISTIC, StageOutput, materialize, retry_on_transient, run_logger
from tasks.shard import SourceFileContent


def read_seed_sft(source: str | Path) -> Any:  # -> pl.DataFrame in SFT_SCHEMA
    """Rows of a seed SFT file as an SFT_SCHEMA frame. Rows without a prompt or completion are reported and dropped."""
    import polars as pl

    from rstar.data.schema import SFT_SCHEMA, validate

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"seed SFT file not found: {path}")
    if path.suffix == ".parquet":
        raw = pl.read_parquet(path)
    elif path.suffix in (".jsonl", ".ndjson"):
        raw = pl.read_ndjson(path)
    elif path.suffix == ".json":
        raw = pl.read_json(path)
    else:
        raise ValueError(f"{path}: seed SFT data must be .jsonl, .json or .parquet")
    missing = [c for c in ("prompt", "completion") if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: seed SFT data lacks columns {missing} (need prompt and completion)")
    usable = raw.filter(
        pl.col("prompt").is_not_null()
        & pl.col("completion").is_not_null()
        & (pl.col("completion").cast(pl.Utf8).str.len_chars() > 0)
    )
    dropped = raw.height - usable.height
    if dropped:
        run_logger().warning("seed SFT %s: %d rows without prompt/completion dropped", path, dropped)
    if usable.height == 0:
        raise ValueError(f"{path}: no usable seed SFT rows")
    n = usable.height
    ids = (
        usable["problem_id"].cast(pl.Utf8)
        if "problem_id" in usable.columns
        else pl.Series([f"seed-{i}" for i in range(n)])
    )
    df = pl.DataFrame(
        {
            "problem_id": ids,
            "tree_id": ids,
            "leaf_id": [""] * n,
            "rank": [0] * n,
            "prompt": usable["prompt"].cast(pl.Utf8),
            "completion": usable["completion"].cast(pl.Utf8),
            "avg_q": [1.0] * n,
            "min_q": [1.0] * n,
            "num_steps": usable["completion"].cast(pl.Utf8).str.count_matches("<end_of_step>|<end_of_code>"),
            "source": ["seed"] * n,
        },
        schema=SFT_SCHEMA,
    )
    return validate(df, SFT_SCHEMA, name="seed SFT")


def ingest_seed_sft_fn(source: str) -> ArtifactRef:
    """The body of `ingest_seed_sft` (callable without Prefect)."""
    df = read_seed_sft(source)

    def build(out: Path, _inputs: Any) -> StageOutput:
        df.write_parquet(out / SFT_FILE)
        return StageOutput(rows=df.height, metrics={"examples": float(df.height)}, info={"source": str(source)})

    content = content_digest(df.select("prompt", "completion").rows())
    return materialize(
        stage="sft", round_idx=0, parents={}, config={"seed_sft": content}, build=build, run_name="ingest-seed-sft"
    )


@task(
    name="ingest-seed-sft",
    task_run_name="ingest-seed-sft",
    cache_policy=DETERMINISTIC + SourceFileContent(),  # an edited file is a new key
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_on_transient,
)
def ingest_seed_sft(source: str) -> ArtifactRef:
    """Store a seed SFT file (prompt, completion) as round 0's SFT artifact; see the module docstring."""
    return ingest_seed_sft_fn(source)

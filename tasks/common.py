"""What every task shares: content-addressed materialisation, model-source resolution, cache and retry policies.

A task is thin: it reads its inputs by URI, calls one `rstar` function, writes the outputs under a content-addressed
key and returns a small `ArtifactRef` (uri, digest, rows). `materialize` is that skeleton:

    ref = materialize(
        stage="aggregate", round_idx=3, parents={"trees": trees_ref}, config={"k": 2},
        build=lambda out, inputs: StageOutput(rows=write_something(inputs["trees"], out)),
    )

1. digest = content_digest(stage, parent digests, config, models, CODE_VERSION); key = rounds/<k>/<stage>/<digest>.
2. If the store already holds a committed artifact at that key (its manifest exists), return it without running
   anything: a second line of defence behind Prefect's cache that survives a lost Prefect database or result storage.
3. Otherwise download the parents (checksums verified), run `build` into a private temporary folder inside a nested
   MLflow stage run (params, every input dataset with its source URI and digest, metrics), then hand the folder to
   the store, which writes the files first and the manifest last. A process killed at any point leaves either a
   committed artifact or nothing under the final key.

Cache policies (Prefect 3): `DETERMINISTIC` = inputs + task source + the artifact store URL, with the MLflow parent
run id left out of the key (it differs on every run and says nothing about the output); sampling tasks take their
seed as an input, so it is part of the key; side effects (registering, promoting) use `NO_CACHE`. Results are
persisted (a cache policy turns persistence on), so a re-run of a round in a new process re-uses every finished task.

The two layers differ in one way, on purpose: Prefect's key covers the task function's source, the store's digest
covers `CODE_VERSION` instead. Editing a task (even a comment) misses Prefect's cache, but the store still holds the
stage's artifact and returns it: days of search are never thrown away for a cosmetic change. A change that alters
what a stage writes must bump `CODE_VERSION` (or the stage's config).

Retries (`retry_on_transient`): only connection errors and timeouts talking to a model server or the store, never a
`ValueError` or a shard that ran past its own time budget.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

import rstar
from infra.settings import get_settings
from infra.storage import ArtifactRef, Manifest, artifact_key, content_digest, open_store
from infra.tracking import get_tracker

# Bump when a task changes what it writes without its inputs changing: every content-addressed key changes with it.
CODE_VERSION = f"rstar-{rstar.__version__}/tasks-1"

# Inputs that identify *where* a run is logged, not *what* it computes: never part of a cache key.
RUN_CONTEXT_ARGS = ("parent_run_id",)


class ArtifactStoreUrl(CachePolicy):
    """Cache key part: the artifact store in use. A cached result is a reference into one store; pointing the
    settings at another store (or another RSTAR_HOME) must not hand out references into the old one."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return hash_objects(get_settings().artifact_url, raise_on_failure=True)


DETERMINISTIC: CachePolicy = INPUTS + TASK_SOURCE + ArtifactStoreUrl() - RUN_CONTEXT_ARGS[0]
SIDE_EFFECT: CachePolicy = NO_CACHE

ARTIFACT_SCHEMES = ("s3://", "file://")
MODEL_SUBDIR = "model"

log = logging.getLogger("rstar.tasks")


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a task or flow (shows in the UI), the module logger elsewhere (`task.fn` tests)."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # no active run context
        return log


# --------------------------------------------------------------------------------------------------------------------
# Retries only on transient errors

# Class names (anywhere in the exception's MRO) of errors worth retrying; matched by name so that this module does
# not import boto3, httpx or openai. Builtin ConnectionError / TimeoutError subclasses are caught by type.
TRANSIENT_NAMES = frozenset(
    {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "APIConnectionError",
        "APITimeoutError",
        "RateLimitError",
        "InternalServerError",
        "ServiceUnavailableError",
        "TransportError",
        "RemoteProtocolError",
    }
)
NOT_TRANSIENT_NAMES = frozenset({"TaskRunTimeoutError"})  # a shard that overran its budget would overrun it again


def is_transient(exc: BaseException | None) -> bool:
    """True for connection errors and timeouts (network, model server, object store); False for everything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        names = {c.__name__ for c in type(exc).__mro__}
        if names & NOT_TRANSIENT_NAMES:
            return False
        if isinstance(exc, ConnectionError | TimeoutError) or names & TRANSIENT_NAMES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """`retry_condition_fn` for Prefect tasks: retry a failed run only if it failed on a transient error."""
    exc = getattr(state, "data", None)
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # the result could not be loaded; judge by that error
            exc = err
    return is_transient(exc if isinstance(exc, BaseException) else None)


# --------------------------------------------------------------------------------------------------------------------
# Artifact references and model sources


def is_artifact_uri(source: str | None) -> bool:
    return bool(source) and str(source).startswith(ARTIFACT_SCHEMES)


def ref_for(uri: str) -> ArtifactRef:
    """The `ArtifactRef` of an existing artifact URI (reads its manifest)."""
    store = open_store()
    m = store.read_manifest(uri)
    return ArtifactRef(uri=store.uri(m.key), digest=m.digest, rows=m.rows, stage=m.stage, key=m.key)


def model_identity(source: str | None) -> str | None:
    """What a model source contributes to a digest: an artifact's content digest, else the spec string itself.

    Keying on the digest (not the URI) keeps keys stable when the same artifacts are served from another store.
    """
    if source is None:
        return None
    if is_artifact_uri(source):
        m = open_store().read_manifest(source)
        return f"artifact:{m.stage}:{m.digest}"
    return source


def resolve_model(source: str | None) -> str | None:
    """A loadable model spec for a source: artifact URIs become `hf:<local copy>`, specs pass through unchanged."""
    if source is None:
        return None
    if not is_artifact_uri(source):
        return source
    local = open_store().get_artifact(source)
    folder = local / MODEL_SUBDIR
    return f"hf:{folder if folder.is_dir() else local}"


# --------------------------------------------------------------------------------------------------------------------
# The code executor

_EXECUTOR_LOCK = threading.Lock()
_EXECUTORS: dict[int, Any] = {}  # pid -> Sandbox


def shared_executor() -> Any:
    """The process's sandbox (`rstar.verify.sandbox.Sandbox`), started on first use and shared by every task here.

    Starting its pre-warmed workers costs seconds; a round's shards, its evaluation and the next round all re-use
    them. The sandbox is thread-safe (concurrent shards share its workers) and closes itself at interpreter exit.
    """
    from rstar.verify.sandbox import Sandbox, SandboxConfig

    with _EXECUTOR_LOCK:
        sandbox = _EXECUTORS.get(os.getpid())
        if sandbox is None or getattr(sandbox, "_closed", False):
            sandbox = _EXECUTORS[os.getpid()] = Sandbox(SandboxConfig())
        return sandbox


# --------------------------------------------------------------------------------------------------------------------
# Materialisation


@dataclass
class StageOutput:
    """What a stage's `build` reports about the folder it wrote: row count, metrics, and which files are datasets."""

    rows: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # small JSON-able facts kept in the manifest's config["info"]
    after_commit: list[Callable[[], None]] = field(default_factory=list)  # e.g. drop a resumable scratch folder


Build = Callable[[Path, Mapping[str, Path]], StageOutput]

DATASET_SUFFIXES = (".parquet", ".jsonl")


def stage_digest(
    stage: str, parents: Mapping[str, ArtifactRef], config: Mapping[str, Any], models: Mapping[str, Any]
) -> str:
    """The content address of a stage output: what went in (parent digests, config incl. seed, models, code)."""
    return content_digest(
        stage,
        {role: ref.digest for role, ref in sorted(parents.items())},
        dict(config),
        {k: v for k, v in sorted(models.items())},
        CODE_VERSION,
    )


def materialize(
    *,
    stage: str,
    round_idx: int | None,
    parents: Mapping[str, ArtifactRef],
    config: Mapping[str, Any],
    build: Build,
    models: Mapping[str, str | None] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    track: bool = True,
) -> ArtifactRef:
    """Produce (or find) the artifact of `stage` for these inputs and return its reference. See the module docstring."""
    models = dict(models or {})
    digest = stage_digest(stage, parents, config, models)
    key = artifact_key(round_idx, stage, digest)
    store = open_store()
    logger = run_logger()
    if store.exists(key):
        m = store.read_manifest(key)
        logger.info("%s: re-using %s (already in the store)", stage, store.uri(key))
        return ArtifactRef(uri=store.uri(key), digest=digest, rows=m.rows, stage=stage, key=key)

    tracker = get_tracker() if track else None
    tmp = Path(tempfile.mkdtemp(prefix=f"rstar-{stage}-"))
    try:
        out = tmp / "out"
        out.mkdir()
        inputs = {role: store.get_artifact(ref.uri) for role, ref in parents.items()}
        started = time.perf_counter()
        if tracker is None:
            result = build(out, inputs)
        else:
            tags = {"stage": stage, "digest": digest, "round": "" if round_idx is None else str(round_idx)}
            with tracker.stage_run(run_name or stage, parent_run_id=parent_run_id, tags=tags):
                tracker.log_params(_flat({"config": dict(config), "models": models}))
                for role, ref in sorted(parents.items()):
                    for path in _datasets(inputs[role]):
                        tracker.log_dataset(
                            path,
                            source_uri=f"{ref.uri.rstrip('/')}/{path.relative_to(inputs[role]).as_posix()}",
                            digest=ref.digest,
                            context=role,
                            name=f"{ref.stage or role}-{ref.digest[:8]}/{path.name}",
                        )
                result = build(out, inputs)
                result.metrics.setdefault("wall_time_s", time.perf_counter() - started)
                tracker.log_metrics(result.metrics)
        result.metrics.setdefault("wall_time_s", time.perf_counter() - started)  # every stage records its time
        manifest = Manifest.create(
            key=key,
            digest=digest,
            stage=stage,
            round=round_idx,
            parents=[p.as_parent(r) for r, p in sorted(parents.items())],
            config={
                **dict(config),
                "tasks_code_version": CODE_VERSION,
                **({"info": result.info} if result.info else {}),
            },
            models={k: v for k, v in models.items() if v is not None},
            rows=result.rows,
            metrics=dict(result.metrics),
        )
        ref = store.put_artifact(key, out, manifest)
        for cleanup in result.after_commit:
            cleanup()
        logger.info("%s: wrote %s (%s rows)", stage, ref.uri, result.rows)
        return ref
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _datasets(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATASET_SUFFIXES)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted MLflow params; lists and other values as compact JSON strings."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, name + "."))
        elif v is None or isinstance(v, str | int | float | bool):
            out[name] = v
        else:
            out[name] = json.dumps(v, sort_keys=True, default=str)
    return out


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")

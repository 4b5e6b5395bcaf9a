"""MLflow tracking of rounds and stages: runs, input datasets, metrics, registered models and the promotion gate.

    from infra.tracking import get_tracker
    tracker = get_tracker()                                  # MLflow at settings.mlflow_tracking_uri, or a no-op
    with tracker.round_run(3, params={"rollouts": 16}) as round_run_id:          # parent run "round-3"
        with tracker.stage_run("train-ppm", parent_run_id=round_run_id) as run_id:  # nested run "train-ppm"
            tracker.log_dataset(pairs_dir, pairs_ref.uri, pairs_ref.digest, context="train", name="pairs")
            tracker.log_metrics({"loss": 0.31})
            version = tracker.register_model("rstar-ppm", ppm_ref.uri, tags={"round": "3"})  # alias "candidate"
        tracker.promote("rstar-ppm", version, metric=0.62)   # moves "champion" only if 0.62 does not regress

Every run is tagged with the git commit and, inside a Prefect run, the flow run id and name. Every dataset a stage
reads is logged as an MLflow input (a polars dataset whose source is the artifact's file:// or s3:// URI, and whose
digest is the artifact digest), which is what `infra.lineage` walks back from a registered model.

The tracker talks to MLflow through an explicit `MlflowClient` and run ids, never MLflow's global fluent state, so
several trackers, threads and Prefect task runners can log concurrently. The current run is a `ContextVar`: Prefect
copies the context into task threads, so a `stage_run` opened inside a task nests under the flow's `round_run` even
without `parent_run_id` (pass it anyway when tasks may run in another process). With the tracking URI "off",
`get_tracker` returns a `NullTracker` whose methods do nothing.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings, git_commit
from infra.storage import MANIFEST_NAME, Manifest, store_for_uri

__all__ = ["NullTracker", "Tracker", "TrackingError", "get_tracker", "git_commit", "prefect_run_tags"]

CANDIDATE = "candidate"
CHAMPION = "champion"
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_BATCH = 100
_FULL_READ_BYTES = 64 * 1024 * 1024
_SAMPLE_ROWS = 10_000
_KEY_RE = re.compile(r"[^A-Za-z0-9_\-. /]")

_RUN_STACK: ContextVar[tuple[str, ...]] = ContextVar("rstar_mlflow_run_stack", default=())


class TrackingError(RuntimeError):
    """A tracking call that cannot be honoured (no active run, a model folder that does not exist, ...)."""


def prefect_run_tags() -> dict[str, str]:
    """Tags naming the Prefect flow run (and task run) we are in; empty outside Prefect.

    Prefect is consulted only when the process already imported it: a run always has, and importing it costs ~2 s.
    """
    if "prefect" not in sys.modules:
        return {}
    tags: dict[str, str] = {}
    try:
        from prefect.runtime import flow_run, task_run

        for key, getter in (
            ("prefect.flow_run_id", flow_run.get_id),
            ("prefect.flow_run_name", flow_run.get_name),
            ("prefect.flow_name", flow_run.get_flow_name),
            ("prefect.task_run_id", task_run.get_id),
            ("prefect.task_run_name", task_run.get_name),
        ):
            value = getter()
            if value:
                tags[key] = str(value)
    except Exception:  # tracking must never break a run because Prefect's runtime could not answer
        return tags
    return tags


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _clean_key(key: str) -> str:
    return _KEY_RE.sub("_", str(key))[:250]


def _str_value(value: Any, limit: int) -> str:
    text = (
        value
        if isinstance(value, str)
        else ("" if value is None else repr(value) if isinstance(value, float) else str(value))
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_frame(path: Path) -> Any:
    """A polars frame describing what a stage read: the table itself, or for an artifact folder its file listing."""
    import polars as pl

    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        if manifest_path.is_file():
            files = Manifest.from_json(manifest_path.read_bytes()).files
            rows = [
                {"path": rel, "size": int(meta["size"]), "sha256": str(meta["sha256"])} for rel, meta in files.items()
            ]
        else:
            rows = [
                {"path": p.relative_to(path).as_posix(), "size": p.stat().st_size, "sha256": ""}
                for p in sorted(path.rglob("*"))
                if p.is_file()
            ]
        parquet = sorted(path.rglob("*.parquet"))
        if len(parquet) == 1:  # an artifact holding one table: describe the table
            return _load_frame(parquet[0])
        return pl.DataFrame(rows, schema={"path": pl.Utf8, "size": pl.Int64, "sha256": pl.Utf8})
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if path.stat().st_size > _FULL_READ_BYTES:  # a big table: its schema and first rows describe it well enough
            return pl.scan_parquet(path).head(_SAMPLE_ROWS).collect()
        return pl.read_parquet(path)
    if suffix in (".jsonl", ".ndjson"):
        return pl.read_ndjson(path)
    if suffix == ".json":
        return pl.read_json(path)
    if suffix == ".csv":
        return pl.read_csv(path)
    raise TrackingError(f"log_dataset: cannot read {path} as a table (parquet, jsonl, json, csv or an artifact folder)")


def _row_count(path: Path) -> int | None:
    """Rows of a parquet table (or of the one table in an artifact folder) from its metadata; None otherwise."""
    import polars as pl

    tables = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if len(tables) != 1 or tables[0].suffix.lower() != ".parquet":
        return None
    try:
        return int(pl.scan_parquet(tables[0]).select(pl.len()).collect().item())
    except Exception:
        return None


class Tracker:
    """MLflow tracking through an explicit client. See the module docstring for the run layout."""

    enabled = True

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "rstar-evolve",
        *,
        registry_uri: str | None = None,
        artifact_location: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.settings = settings
        self._client: Any = None
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Tracker({self.tracking_uri!r}, experiment={self.experiment!r})"

    # -- plumbing

    @property
    def client(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # these machines are offline; never phone home
            if self.tracking_uri.startswith("sqlite:///"):  # the embedded default: the database folder must exist
                Path(self.tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            from mlflow.exceptions import MlflowException

            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self._experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=self.artifact_location
                    )
                except MlflowException:  # created concurrently by another process
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
            else:
                self._experiment_id = exp.experiment_id
        assert self._experiment_id is not None
        return self._experiment_id

    def active_run_id(self) -> str | None:
        """The innermost run opened by `round_run`/`stage_run` in this context (thread or Prefect task)."""
        stack = _RUN_STACK.get()
        return stack[-1] if stack else None

    def run_url(self, run_id: str) -> str | None:
        """A link to the run in the MLflow UI (None when tracking has no server)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def _target(self, run_id: str | None, what: str) -> str:
        run_id = run_id or self.active_run_id()
        if not run_id:
            raise TrackingError(f"{what}: no active run; call it inside tracker.stage_run(...) or pass run_id=")
        return run_id

    def _base_tags(self) -> dict[str, str]:
        tags = prefect_run_tags()
        commit = git_commit()
        if commit:
            tags["rstar.git_commit"] = commit
            tags["mlflow.source.git.commit"] = commit
        return tags

    @contextlib.contextmanager
    def _run(self, name: str, parent: str | None, tags: Mapping[str, Any]) -> Iterator[str]:
        all_tags = {**self._base_tags(), **{_clean_key(k): _str_value(v, _MAX_TAG_LEN) for k, v in tags.items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id = str(run.info.run_id)
        outer = _RUN_STACK.get()
        token = _RUN_STACK.set((*outer, run_id))
        status = "FINISHED"
        try:
            yield run_id
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            try:
                _RUN_STACK.reset(token)
            except ValueError:  # closed from another context (e.g. by an async engine): restore by value
                _RUN_STACK.set(outer)
            with contextlib.suppress(Exception):  # never mask the stage's own exception with a tracking error
                self.client.set_terminated(run_id, status=status)

    # -- runs

    @contextlib.contextmanager
    def round_run(
        self, round_idx: int, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> Iterator[str]:
        """The parent run of one round, named `round-<k>`; yields its run id. Ends FAILED if the body raises."""
        with self._run(
            f"round-{round_idx}", None, {"rstar.round": round_idx, "rstar.kind": "round", **(tags or {})}
        ) as rid:
            self.log_params(params, run_id=rid)
            yield rid

    @contextlib.contextmanager
    def stage_run(
        self, stage: str, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[str]:
        """A run for one stage, nested under `parent_run_id` (default: the active run); yields its run id."""
        parent = parent_run_id or self.active_run_id()
        with self._run(stage, parent, {"rstar.stage": stage, "rstar.kind": "stage", **(tags or {})}) as rid:
            yield rid

    # -- logging

    def log_params(self, params: Mapping[str, Any], *, run_id: str | None = None) -> None:
        """Log (nested dicts flattened to dotted keys) parameters; values are stringified and truncated to 6000."""
        from mlflow.entities import Param

        rid = self._target(run_id, "log_params")
        items = [Param(_clean_key(k), _str_value(v, _MAX_PARAM_LEN)) for k, v in _flatten(params).items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(rid, params=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, *, run_id: str | None = None) -> None:
        """Log numeric metrics (nested dicts flattened); non-numeric values are skipped, booleans count as 0/1."""
        from mlflow.entities import Metric

        rid = self._target(run_id, "log_metrics")
        now = int(time.time() * 1000)
        items = []
        for key, value in _flatten(metrics).items():
            if isinstance(value, bool):
                value = int(value)
            if isinstance(value, int | float):
                items.append(Metric(_clean_key(key), float(value), now, step or 0))
        for i in range(0, len(items), 1000):
            self.client.log_batch(rid, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any], *, run_id: str | None = None) -> None:
        rid = self._target(run_id, "set_tags")
        for key, value in tags.items():
            self.client.set_tag(rid, _clean_key(key), _str_value(value, _MAX_TAG_LEN))

    def log_dataset(
        self,
        path: Path,
        source_uri: str,
        digest: str,
        context: str,
        name: str,
        *,
        run_id: str | None = None,
    ) -> None:
        """Record that the current stage read `source_uri` (an artifact URI) with `digest`, as an MLflow input.

        `path` is the local copy that was read (a table file or an artifact folder): its schema and rows become the
        dataset's profile (tables over 64 MiB are profiled from their first 10,000 rows; the `rstar.rows` input tag
        has the true count). The source URI and digest are what `rstar lineage` follows.
        """
        from mlflow.data.polars_dataset import from_polars
        from mlflow.entities import DatasetInput, InputTag

        rid = self._target(run_id, "log_dataset")
        path = Path(path)
        frame = _load_frame(path)
        with warnings.catch_warnings():  # "file://... can be interpreted in multiple ways": all mean the same file
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_polars(frame, source=source_uri, name=name, digest=digest)
        tags = [
            InputTag(key="mlflow.data.context", value=context),
            InputTag(key="rstar.digest", value=digest),
            InputTag(key="rstar.source", value=source_uri),
        ]
        rows = _row_count(path)
        if rows is not None:
            tags.append(InputTag(key="rstar.rows", value=str(rows)))
        self.client.log_inputs(rid, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None, *, run_id: str | None = None) -> None:
        """Upload a folder (plots, reports) as run artifacts."""
        rid = self._target(run_id, "log_artifacts")
        self.client.log_artifacts(rid, str(local_dir), artifact_path)

    # -- registry

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException as exc:
                if "ALREADY_EXISTS" not in str(exc.error_code):
                    raise

    def register_model(
        self,
        name: str,
        model_uri_or_dir: str | Path,
        *,
        tags: Mapping[str, Any],
        alias: str | None = CANDIDATE,
        run_id: str | None = None,
        copy: bool | None = None,
    ) -> str:
        """Register a model version and point `alias` at it; returns the version number as a string.

        `model_uri_or_dir` is a local model folder, an artifact-store URI (file:// or s3://, recorded in the
        `rstar.artifact_uri` tag) or an MLflow URI (runs:/, models:/, mlflow-artifacts:) used as the source directly.
        Folders, and artifact-store models unless `copy` is False (default: settings.mlflow_copy_models), are logged
        as artifacts of the current run under `models/<name>` and registered from `runs:/<run id>/models/<name>` (no
        MLflow flavor needed), so the registry holds a self-contained copy. Outside any run a `register-<name>` run
        is opened for it.
        """
        rid = run_id or self.active_run_id()
        if not rid:  # called outside any run (e.g. a task in another process): give the registration its own run
            with self.stage_run(f"register-{name}", tags={"rstar.kind": "register"}) as own:
                return self.register_model(name, model_uri_or_dir, tags=tags, alias=alias, run_id=own, copy=copy)
        src = str(model_uri_or_dir)
        version_tags: dict[str, str] = {k: _str_value(v, _MAX_TAG_LEN) for k, v in self._base_tags().items()}
        local: Path | None = None
        if src.startswith(("file://", "s3://")):
            settings = self.settings or get_settings()
            store = store_for_uri(src, settings)
            manifest = store.read_manifest(src)
            version_tags.update({"rstar.artifact_uri": src, "rstar.digest": manifest.digest})
            if settings.mlflow_copy_models if copy is None else copy:
                local = store.get_artifact(src)
        elif "://" not in src and not src.startswith(("runs:/", "models:/", "mlflow-artifacts:")):
            local = Path(src)
            if not local.is_dir():
                raise TrackingError(f"register_model: {src} is neither a model folder nor a model URI")
        if local is not None:
            artifact_path = f"models/{name}"
            self.client.log_artifacts(rid, str(local), artifact_path)
            source = f"runs:/{rid}/{artifact_path}"
        else:
            source = src
        version_tags.update({_clean_key(k): _str_value(v, _MAX_TAG_LEN) for k, v in tags.items()})
        self._ensure_registered_model(name)
        mv = self.client.create_model_version(name, source=source, run_id=rid, tags=version_tags)
        version = str(mv.version)
        if alias:
            self.client.set_registered_model_alias(name, alias, version)
        return version

    def model_version_by_alias(self, name: str, alias: str) -> Any | None:
        """The `ModelVersion` an alias points at, or None when the model or alias does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def promote(
        self,
        name: str,
        version: str,
        metric: float,
        *,
        higher_is_better: bool = True,
        metric_name: str = "eval_metric",
        tolerance: float = 0.0,
    ) -> bool:
        """The promotion gate: move the `champion` alias to `version` unless `metric` regresses against the champion.

        The metric is stored as the version's `rstar.<metric_name>` tag, and compared with the champion's tag. No
        champion yet, a champion without that tag, or a metric equal to the champion's (within `tolerance`) promotes.
        A NaN metric never promotes. The decision is recorded in the version's `rstar.promotion` tag.
        """
        version = str(version)
        tag = f"rstar.{_clean_key(metric_name)}"
        value = float(metric)
        self.client.set_model_version_tag(name, version, tag, repr(value))
        if math.isnan(value):
            self.client.set_model_version_tag(name, version, "rstar.promotion", f"rejected: {metric_name} is NaN")
            return False
        champion = self.model_version_by_alias(name, CHAMPION)
        if champion is not None and str(champion.version) != version and tag in (champion.tags or {}):
            best = float(champion.tags[tag])
            regress = value < best - tolerance if higher_is_better else value > best + tolerance
            if regress:
                self.client.set_model_version_tag(
                    name,
                    version,
                    "rstar.promotion",
                    f"rejected: {metric_name} {value:g} regresses from champion v{champion.version} ({best:g})",
                )
                return False
        self.client.set_registered_model_alias(name, CHAMPION, version)
        previous = f" (was v{champion.version})" if champion is not None and str(champion.version) != version else ""
        self.client.set_model_version_tag(name, version, "rstar.promotion", f"champion{previous}")
        return True


class NullTracker(Tracker):
    """Tracking switched off (`RSTAR_MLFLOW_TRACKING_URI=off`): every call succeeds and records nothing."""

    enabled = False

    def __init__(self) -> None:
        super().__init__("off")

    @contextlib.contextmanager
    def round_run(
        self, round_idx: int, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> Iterator[str]:
        yield ""

    @contextlib.contextmanager
    def stage_run(
        self, stage: str, parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> Iterator[str]:
        yield ""

    def run_url(self, run_id: str) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any], *, run_id: str | None = None) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, *, run_id: str | None = None) -> None:
        return None

    def set_tags(self, tags: Mapping[str, Any], *, run_id: str | None = None) -> None:
        return None

    def log_dataset(
        self, path: Path, source_uri: str, digest: str, context: str, name: str, *, run_id: str | None = None
    ) -> None:
        return None

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None, *, run_id: str | None = None) -> None:
        return None

    def register_model(
        self,
        name: str,
        model_uri_or_dir: str | Path,
        *,
        tags: Mapping[str, Any],
        alias: str | None = CANDIDATE,
        run_id: str | None = None,
        copy: bool | None = None,
    ) -> str:
        return ""

    def model_version_by_alias(self, name: str, alias: str) -> Any | None:
        return None

    def promote(
        self,
        name: str,
        version: str,
        metric: float,
        *,
        higher_is_better: bool = True,
        metric_name: str = "eval_metric",
        tolerance: float = 0.0,
    ) -> bool:
        """Without a registry there is no champion to compare with: like a first round, the candidate stands."""
        return not math.isnan(float(metric))


_TRACKERS: dict[tuple[str, str, str | None], Tracker] = {}


def get_tracker(settings: Settings | None = None) -> Tracker:
    """The tracker for these settings (one per tracking URI and experiment in a process); NullTracker when "off"."""
    settings = settings or get_settings()
    if not settings.tracking_enabled:
        return NullTracker()
    key = (settings.mlflow_tracking_uri, settings.mlflow_experiment, settings.mlflow_artifact_location)
    tracker = _TRACKERS.get(key)
    if tracker is None:
        tracker = Tracker(
            settings.mlflow_tracking_uri,
            settings.mlflow_experiment,
            artifact_location=settings.mlflow_artifact_location,
            settings=settings,
        )
        _TRACKERS[key] = tracker
    return tracker

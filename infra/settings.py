"""Where every service lives: one typed settings object read from the environment or `.env`, with embedded defaults.

    from infra.settings import get_settings, configure_prefect_env
    s = get_settings()                 # RSTAR_* environment variables, then ./.env, then the defaults below
    configure_prefect_env(s)           # before the first `import prefect` of the process (it reads its env once)
    s.artifact_url                     # "file:///abs/.rstar/artifacts" or "s3://bucket/prefix"
    s.mlflow_tracking_uri              # "sqlite:////abs/.rstar/mlflow.db", "http://127.0.0.1:5000" or "off"

With no configuration at all everything is embedded under `$RSTAR_HOME` (default `./.rstar`): a local artifact
store, an MLflow SQLite database (no server needed) and Prefect's ephemeral API. Pointing at real services is a
matter of environment variables (see `.env.example` and docs/storage-and-lineage.md). Credentials are never
settings: S3 keys come only from the standard `AWS_*` variables or profiles, so they never land in a log or a
pickled parameter.

`get_settings()` is cached; tests change the environment and call `get_settings.cache_clear()`.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The project checkout (used to find the git commit of the running code).
PROJECT_ROOT = Path(__file__).resolve().parents[1]

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Endpoints and local paths. Every field reads `RSTAR_<FIELD>` from the environment or `.env`."""

    model_config = SettingsConfigDict(env_prefix="RSTAR_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".rstar"), description="Embedded state, caches and the local artifact store.")
    artifact_url: str = Field(
        default="",
        description='Artifact store: "" -> file://<home>/artifacts; a path or file:// URL; or s3://bucket/prefix.',
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, Ceph, moto); None = AWS. Credentials only from AWS_* env.",
    )
    s3_region: str | None = Field(default=None, description="S3 region; None = the AWS_* environment or us-east-1.")
    s3_multipart_threshold: int = Field(
        default=64 * MIB, ge=5 * MIB, description="Files at least this large go up as multipart uploads (bytes)."
    )
    s3_multipart_chunksize: int = Field(
        default=16 * MIB, ge=5 * MIB, description="Multipart part size (bytes, >= 5 MiB)."
    )
    mlflow_tracking_uri: str = Field(
        default="",
        description='"" -> sqlite:///<home>/mlflow.db (no server); an http(s):// server; "off" disables tracking.',
    )
    mlflow_experiment: str = Field(default="rstar-evolve", description="MLflow experiment holding every round run.")
    mlflow_copy_models: bool = Field(
        default=True,
        description="Copy registered model folders into MLflow run artifacts (False: register the artifact URI itself).",
    )
    policy_model_name: str = Field(default="rstar-policy", description="Registered model name of the policy.")
    ppm_model_name: str = Field(
        default="rstar-ppm", description="Registered model name of the process preference model."
    )
    prefect_api_url: str | None = Field(
        default=None,
        description="Prefect API of a running server; None = Prefect's ephemeral API (PREFECT_HOME in home).",
    )
    cache_dir: Path = Field(
        default=Path(".rstar/cache"), description="Local copies of downloaded artifacts (default <home>/cache)."
    )

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        """Make paths absolute and fill the derived defaults, so every consumer sees the same concrete values."""
        self.home = self.home.expanduser().absolute()
        if "cache_dir" not in self.model_fields_set:
            self.cache_dir = self.home / "cache"
        self.cache_dir = self.cache_dir.expanduser().absolute()
        self.artifact_url = _normalise_artifact_url(self.artifact_url, self.home)
        uri = self.mlflow_tracking_uri.strip()
        if not uri:
            uri = f"sqlite:///{self.home / 'mlflow.db'}"
        elif uri.lower() in ("off", "none", "false", "0"):
            uri = "off"
        self.mlflow_tracking_uri = uri
        if self.s3_endpoint_url is not None and not self.s3_endpoint_url.strip():
            self.s3_endpoint_url = None
        if self.prefect_api_url is not None and not self.prefect_api_url.strip():
            self.prefect_api_url = None
        return self

    @property
    def tracking_enabled(self) -> bool:
        return self.mlflow_tracking_uri != "off"

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Where runs of a new experiment keep artifacts when MLflow runs embedded (SQLite/file URI, no server).

        Without it MLflow would write `./mlruns` in whatever directory the process happens to run in.
        A tracking server decides this itself (None).
        """
        if self.mlflow_tracking_uri.startswith(("sqlite:", "file:", "/")):
            return (self.home / "mlartifacts").as_uri()
        return None

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"


def _normalise_artifact_url(url: str, home: Path) -> str:
    url = url.strip()
    if not url:
        return (home / "artifacts").as_uri()
    if url.startswith("s3://"):
        bucket = url[5:].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"RSTAR_ARTIFACT_URL {url!r} names no bucket (expected s3://bucket/prefix)")
        return url.rstrip("/")
    if url.startswith("file://"):
        return Path(url[7:]).expanduser().absolute().as_uri()
    if "://" in url:
        raise ValueError(f"RSTAR_ARTIFACT_URL {url!r}: only file:// (or a path) and s3:// are supported")
    return Path(url).expanduser().absolute().as_uri()


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached). After changing RSTAR_* variables call `get_settings.cache_clear()`."""
    return Settings()


def prefect_env(settings: Settings) -> dict[str, str]:
    """The Prefect environment variables our defaults need (see `configure_prefect_env`)."""
    env = {
        "PREFECT_HOME": str(settings.prefect_home),
        # A fresh Prefect home runs ~21 s of SQLite migrations on the first ephemeral start: more than the 20 s default.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        # Task results (small manifests) persisted so a re-run of a round finds its cached stages.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(settings.prefect_home / "storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The flow-run heartbeat (Prefect default 180 s) stays on: it is how a server marks the runs of a dead node
        # as crashed so they can be resumed. It costs ~1 s per flow run; tests that run many tiny flows may set
        # PREFECT_FLOWS_HEARTBEAT_FREQUENCY or disable it with prefect.settings.temporary_settings.
    }
    if settings.prefect_api_url:
        env["PREFECT_API_URL"] = settings.prefect_api_url
    return env


def configure_prefect_env(settings: Settings | None = None, *, override: bool = False) -> dict[str, str]:
    """Export the Prefect settings implied by ours into `os.environ`; return what was set.

    Call it before the process first imports prefect (Prefect reads its environment at import); when prefect is
    already imported its global settings context is refreshed. Variables the user exported explicitly win unless
    `override`; an explicit `RSTAR_PREFECT_API_URL` always wins over `PREFECT_API_URL`.
    """
    settings = settings or get_settings()
    applied: dict[str, str] = {}
    for key, value in prefect_env(settings).items():
        if override or key not in os.environ or (key == "PREFECT_API_URL" and settings.prefect_api_url):
            os.environ[key] = value
            applied[key] = value
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    if applied:
        _refresh_prefect()
    return applied


def _refresh_prefect() -> None:
    """Make an already imported prefect re-read its environment (its root settings context is built at import)."""
    if "prefect.context" in sys.modules:
        import prefect.context

        prefect.context.refresh_global_settings_context()


def code_version() -> str:
    """The installed version of this project (manifests record it beside the git commit)."""
    try:
        from importlib.metadata import version

        return version("rstar-evolve")
    except Exception:
        return "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the running code: $RSTAR_GIT_COMMIT (for images without .git), else `git rev-parse HEAD`.

    A "-dirty" suffix marks uncommitted changes to tracked files, so a manifest never claims a commit it did not run.
    """
    explicit = os.environ.get("RSTAR_GIT_COMMIT")
    if explicit:
        return explicit
    try:
        head = _git("rev-parse", "HEAD")
        if head is None:
            return None
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return f"{head}-dirty" if dirty else head
    except Exception:
        return None


def _git(*args: str) -> str | None:
    out: Any = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=False)
    return out.stdout.strip() if out.returncode == 0 else None

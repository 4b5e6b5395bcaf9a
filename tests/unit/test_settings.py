"""Settings: embedded defaults under RSTAR_HOME, overrides from the environment and .env, the Prefect environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import settings as settings_mod
from infra.settings import Settings, configure_prefect_env, get_settings, git_commit, prefect_env

ROOT = Path(__file__).resolve().parents[2]
RSTAR_VARS = [
    "RSTAR_HOME",
    "RSTAR_ARTIFACT_URL",
    "RSTAR_S3_ENDPOINT_URL",
    "RSTAR_S3_REGION",
    "RSTAR_MLFLOW_TRACKING_URI",
    "RSTAR_MLFLOW_EXPERIMENT",
    "RSTAR_PREFECT_API_URL",
    "RSTAR_CACHE_DIR",
    "RSTAR_S3_MULTIPART_THRESHOLD",
]
PREFECT_VARS = list(prefect_env(Settings(home=Path("/x"), prefect_api_url="http://p")).keys())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No RSTAR_*/PREFECT_* variables and a working directory without a .env file."""
    for var in RSTAR_VARS + PREFECT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_embedded_defaults_live_under_home(clean_env: Path) -> None:
    s = Settings()
    home = clean_env / ".rstar"
    assert s.home == home and s.home.is_absolute()
    assert s.artifact_url == (home / "artifacts").as_uri()
    assert s.mlflow_tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert s.tracking_enabled
    assert s.cache_dir == home / "cache"
    assert s.s3_endpoint_url is None and s.prefect_api_url is None
    assert s.mlflow_artifact_location == (home / "mlartifacts").as_uri()
    assert s.prefect_home == home / "prefect"


def test_environment_overrides(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RSTAR_HOME", str(clean_env / "h"))
    monkeypatch.setenv("RSTAR_ARTIFACT_URL", "s3://my-bucket/some/prefix/")
    monkeypatch.setenv("RSTAR_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("RSTAR_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("RSTAR_PREFECT_API_URL", "http://127.0.0.1:4200/api")
    s = Settings()
    assert s.home == clean_env / "h"
    assert s.cache_dir == clean_env / "h" / "cache"  # follows home unless set
    assert s.artifact_url == "s3://my-bucket/some/prefix"
    assert s.s3_endpoint_url == "http://127.0.0.1:9000"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert s.mlflow_artifact_location is None  # a server decides where artifacts go
    assert s.prefect_api_url == "http://127.0.0.1:4200/api"


@pytest.mark.parametrize("value", ["off", "OFF", "none", "false"])
def test_tracking_can_be_switched_off(clean_env: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RSTAR_MLFLOW_TRACKING_URI", value)
    s = Settings()
    assert s.mlflow_tracking_uri == "off" and not s.tracking_enabled


def test_dotenv_file_is_read_and_environment_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text(
        "RSTAR_MLFLOW_EXPERIMENT=from-dotenv\nRSTAR_ARTIFACT_URL=s3://dotenv-bucket\nAWS_ACCESS_KEY_ID=ignored\n"
    )
    assert Settings().mlflow_experiment == "from-dotenv"
    assert Settings().artifact_url == "s3://dotenv-bucket"
    monkeypatch.setenv("RSTAR_MLFLOW_EXPERIMENT", "from-env")
    assert Settings().mlflow_experiment == "from-env"


def test_local_artifact_paths_become_file_uris(clean_env: Path) -> None:
    assert Settings(artifact_url="store").artifact_url == (clean_env / "store").as_uri()
    assert Settings(artifact_url="file:///data/a/").artifact_url == "file:///data/a"


@pytest.mark.parametrize("bad", ["gs://bucket/x", "s3://", "s3:///prefix-without-bucket"])
def test_unsupported_artifact_urls_are_rejected(clean_env: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="RSTAR_ARTIFACT_URL"):
        Settings(artifact_url=bad)


def test_multipart_part_size_has_the_s3_minimum(clean_env: Path) -> None:
    with pytest.raises(ValueError):
        Settings(s3_multipart_chunksize=1024)


def test_get_settings_is_cached_until_cleared(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_settings()
    monkeypatch.setenv("RSTAR_MLFLOW_EXPERIMENT", "changed")
    assert get_settings() is first and first.mlflow_experiment == "rstar-evolve"
    get_settings.cache_clear()
    assert get_settings().mlflow_experiment == "changed"


def test_configure_prefect_env_sets_what_prefect_needs(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_mod, "_refresh_prefect", lambda: None)
    s = Settings(home=clean_env / "h")
    applied = configure_prefect_env(s)
    assert os.environ["PREFECT_HOME"] == str(clean_env / "h" / "prefect")
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60  # fresh home: ~21 s migrations
    assert os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] == str(clean_env / "h" / "prefect" / "storage")
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_URL" not in os.environ  # ephemeral API by default
    assert set(applied) == set(prefect_env(s))
    assert (clean_env / "h" / "prefect").is_dir()


def test_configure_prefect_env_respects_explicit_variables(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_mod, "_refresh_prefect", lambda: None)
    monkeypatch.setenv("PREFECT_HOME", "/explicit/home")
    monkeypatch.setenv("PREFECT_API_URL", "http://old:4200/api")
    s = Settings(home=clean_env / "h", prefect_api_url="http://new:4200/api")
    applied = configure_prefect_env(s)
    assert os.environ["PREFECT_HOME"] == "/explicit/home" and "PREFECT_HOME" not in applied
    assert os.environ["PREFECT_API_URL"] == "http://new:4200/api"  # an explicit RSTAR_PREFECT_API_URL wins
    configure_prefect_env(s, override=True)
    assert os.environ["PREFECT_HOME"] == str(clean_env / "h" / "prefect")


@pytest.mark.slow
def test_prefect_sees_the_configured_home_even_when_already_imported(tmp_path: Path) -> None:
    """Prefect reads its settings at import: configure_prefect_env must refresh them when it comes later."""
    code = (
        "import json, prefect\n"
        "from prefect.settings import get_current_settings\n"
        "from infra.settings import Settings, configure_prefect_env\n"
        f"configure_prefect_env(Settings(home={str(tmp_path)!r}))\n"
        "s = get_current_settings()\n"
        "print(json.dumps([str(s.home), s.server.ephemeral.startup_timeout_seconds, s.results.persist_by_default]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RSTAR_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    home, timeout, persist = json.loads(out.stdout.strip().splitlines()[-1])
    assert home == str(tmp_path / "prefect") and timeout == 120 and persist is True


def test_git_commit_names_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    git_commit.cache_clear()
    monkeypatch.delenv("RSTAR_GIT_COMMIT", raising=False)
    try:
        commit = git_commit()
        if (ROOT / ".git").exists():
            assert commit is not None and re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit)
        monkeypatch.setenv("RSTAR_GIT_COMMIT", "abc123")
        git_commit.cache_clear()
        assert git_commit() == "abc123"
    finally:
        git_commit.cache_clear()

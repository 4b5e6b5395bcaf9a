"""Integration fixtures: one Prefect test server per session (isolated PREFECT_HOME), and an isolated rstar home.

`prefect_harness` starts Prefect's test server once for the whole session (~20-30 s: a fresh Prefect home runs ~21 s
of SQLite migrations, more than the default ephemeral start-up timeout of 20 s, hence the longer timeout) with
PREFECT_HOME and the result storage in a temporary folder, never the developer's ~/.prefect. Tests that need it
take the fixture; other integration tests pay nothing.

`rstar_home` gives each test its own `RSTAR_HOME` (artifact store, caches) with MLflow tracking off unless the test
turns it on, and clears the cached settings around it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class PrefectHarness:
    home: Path
    api_url: str
    env: dict[str, str]  # what a subprocess needs to talk to the same server and share the result storage


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectHarness]:
    home = tmp_path_factory.mktemp("prefect-home")
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
    }
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    mp.delenv("PREFECT_API_URL", raising=False)

    import prefect.context
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    # prefect may have been imported by an earlier test module: override its settings context as well as the env.
    prefect.context.refresh_global_settings_context()
    try:
        with (
            temporary_settings(
                updates={
                    PREFECT_HOME: home,
                    PREFECT_RESULTS_LOCAL_STORAGE_PATH: home / "storage",
                    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 180,
                }
            ),
            prefect_test_harness(server_startup_timeout=180),
        ):
            from prefect.settings import PREFECT_API_URL

            api_url = str(PREFECT_API_URL.value())
            yield PrefectHarness(home=home, api_url=api_url, env={**env, "PREFECT_API_URL": api_url})
    finally:
        mp.undo()
        prefect.context.refresh_global_settings_context()


@pytest.fixture(scope="session")
def shared_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of locally built models (tiny:0, ...) for the whole session: each builds once."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def rstar_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_models: Path) -> Iterator[Path]:
    """An isolated RSTAR_HOME (local artifact store under it), tracking off; settings cache cleared around the test.

    `<home>/models` links to the session's shared model folder, so `tiny:0` is built once per session.
    """
    from infra.settings import get_settings

    home = tmp_path / "rstar-home"
    home.mkdir()
    (home / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("RSTAR_HOME", str(home))
    monkeypatch.setenv("RSTAR_MLFLOW_TRACKING_URI", "off")
    for var in ("RSTAR_ARTIFACT_URL", "RSTAR_CACHE_DIR", "RSTAR_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()

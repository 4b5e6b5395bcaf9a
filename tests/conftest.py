"""Test-wide settings: offline model hubs, an isolated home for every service the tests touch."""

from __future__ import annotations

import os

# No hub access exists on these machines; every model a test needs is built locally or shipped in a package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout: test copies of the benchmarks and the external grader cases."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not present beside the checkout")
    return SHARED_DATA

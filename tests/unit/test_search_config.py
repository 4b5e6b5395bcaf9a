"""SearchConfig: validation at construction, per-field help, the paper's per-round settings."""

from __future__ import annotations

import dataclasses

import pytest

from rstar.config import SearchConfig, field_help
from rstar.search import sampling_spec
from rstar.verify.steps import STOP_STRINGS


def test_defaults_follow_the_paper() -> None:
    cfg = SearchConfig()
    assert (cfg.mode, cfg.rollouts, cfg.candidates, cfg.max_depth, cfg.c_uct) == ("terminal", 16, 8, 16, 2.0)
    assert (cfg.temperature, cfg.unvisited, cfg.code_errors) == (0.7, "first", "drop")


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "greedy"},
        {"rollouts": 0},
        {"candidates": 0},
        {"max_depth": 0},
        {"c_uct": -1.0},
        {"unvisited": "random"},
        {"code_errors": "ignore"},
        {"unparsable": "maybe"},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"max_step_tokens": 0},
        {"max_active_trees": 0},
        {"error_threshold": 0},
        {"extra_rollouts_if_unsolved": -1},
        {"rollouts": 2.5},
        {"seed": "x"},
    ],
)
def test_invalid_values_fail_at_construction(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        SearchConfig(**bad)


def test_every_field_has_help() -> None:
    helps = field_help(SearchConfig)
    assert set(helps) == {f.name for f in dataclasses.fields(SearchConfig)}
    assert all(len(h) > 10 for h in helps.values())


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SearchConfig().rollouts = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("k", "mode", "rollouts", "temperature", "extra"),
    [(1, "terminal", 8, 0.7, 16), (2, "terminal", 16, 1.0, 16), (3, "ppm", 16, 1.0, 16), (4, "ppm", 16, 1.0, 64)],
)
def test_for_round(k: int, mode: str, rollouts: int, temperature: float, extra: int) -> None:
    cfg = SearchConfig.for_round(k)
    assert (cfg.mode, cfg.rollouts, cfg.temperature, cfg.extra_rollouts_if_unsolved) == (
        mode,
        rollouts,
        temperature,
        extra,
    )


def test_for_round_overrides_and_rejects_round_zero() -> None:
    cfg = SearchConfig.for_round(3, rollouts=4, seed=9)
    assert (cfg.mode, cfg.rollouts, cfg.seed) == ("ppm", 4, 9)
    with pytest.raises(ValueError, match="1-based"):
        SearchConfig.for_round(0)


def test_sampling_spec_of_an_expansion() -> None:
    spec = sampling_spec(SearchConfig(candidates=5, temperature=1.0, top_p=0.9, max_step_tokens=100, seed=4))
    assert (spec.n, spec.temperature, spec.top_p, spec.max_tokens, spec.seed) == (5, 1.0, 0.9, 100, 4)
    assert spec.stop == STOP_STRINGS

"""Training configuration arithmetic that needs no model."""

from __future__ import annotations

import pytest

from rstar.train.common import TrainConfig, optimizer_steps


@pytest.mark.parametrize(
    ("n", "batch", "accum", "epochs", "cap", "expected"),
    [
        (16, 8, 1, 2.0, -1, 4),  # epochs decide
        (17, 8, 1, 1.0, -1, 3),  # a last partial batch is a step
        (16, 4, 2, 1.0, -1, 2),  # gradient accumulation
        (100, 8, 1, 2.0, 10, 10),  # the cap bites
        (8, 8, 1, 1.0, 24, 1),  # the cap never repeats the data (transformers' max_steps would run 24 steps)
        (3, 8, 1, 0.5, -1, 1),  # at least one step
        (50, 8, 1, 0.0, 5, 5),  # only a step count
    ],
)
def test_optimizer_steps(n: int, batch: int, accum: int, epochs: float, cap: int, expected: int) -> None:
    cfg = TrainConfig(batch_size=batch, grad_accum=accum, num_epochs=epochs, max_steps=cap)
    assert optimizer_steps(cfg, n) == expected

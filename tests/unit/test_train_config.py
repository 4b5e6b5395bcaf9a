"""Training configuration arithmetic that needs no model."""

from __future__ import annotations

import pytest

from rstar.train.common import TrainConfig, optimizer_steps, warmup_steps


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


@pytest.mark.parametrize(
    ("warmup", "steps", "expected"),
    [
        (0.1, 100, 10),  # a ratio of the run
        (0.1, 1, 0),  # one step: ceil(0.1) = 1 warm-up step would run it at learning rate 0 and train nothing
        (0.1, 2, 0),
        (0.2, 3, 1),
        (0.5, 8, 3),  # capped at (steps - 1) // 2
        (5, 100, 5),  # a count
        (5, 4, 1),
        (0.0, 10, 0),
    ],
)
def test_warmup_never_swallows_a_short_run(warmup: float, steps: int, expected: int) -> None:
    assert warmup_steps(TrainConfig(warmup=warmup), steps) == expected


def test_training_kwargs_pass_the_capped_warmup(tmp_path) -> None:
    from rstar.train.common import Device, training_kwargs

    cpu = Device(use_cpu=True, bf16=False, gradient_checkpointing=False, name="cpu")
    kw = training_kwargs(TrainConfig(warmup=0.1, batch_size=8, num_epochs=1.0), tmp_path, cpu, n_examples=5)
    assert kw["max_steps"] == 1 and kw["warmup_steps"] == 0
    kw = training_kwargs(TrainConfig(warmup=0.1, batch_size=8, num_epochs=2.0), tmp_path, cpu, n_examples=400)
    assert kw["max_steps"] == 100 and kw["warmup_steps"] == 10

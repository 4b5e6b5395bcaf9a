"""Batched, lock-step trajectory generation shared by the evaluation modes.

Every open trajectory of every problem in a chunk advances by one step per policy call (batch first, as the backends
want it), then all code the new steps need runs in one `CodeExecutor.run_batch` call:

    trajs = [Trajectory(fmt.prompt(p.question)) for p in problems]
    done = rollout(trajs, policy, fmt, executor, temperature=0.0, top_p=1.0, max_steps=16)

Sampling seeds are derived from (run seed, problem id, sample index, depth) by `rstar.seeds.stable_seed`, never from
a trajectory's position in the batch, so a problem's samples do not depend on which other problems share its batch and maj@4's
samples are the first four of maj@16's (on backends that honour per-prompt seeds).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from rstar.eval.prompts import Trajectory, TrajectoryFormat
from rstar.types import CodeExecutor, PolicyLM, RewardModel


class EvalError(RuntimeError):
    """A mode cannot run as configured (no executor for code, no PPM for a PPM-ranked mode, a backend broke a contract)."""


def advance(
    trajs: Sequence[Trajectory],
    policy: PolicyLM,
    fmt: TrajectoryFormat,
    executor: CodeExecutor | None,
    *,
    temperature: float,
    top_p: float = 1.0,
    n: int = 1,
    seeds: Sequence[int] | None = None,
) -> list[list[Trajectory]]:
    """One step for each trajectory: `n` candidate continuations each, code executed, statuses set."""
    if not trajs:
        return []
    spec = fmt.spec(temperature=temperature, top_p=top_p, n=n)
    outs = policy.generate([t.text for t in trajs], spec, seeds=None if spec.greedy else seeds)
    if len(outs) != len(trajs) or any(len(o) != n for o in outs):
        raise EvalError(
            f"policy {policy.model_id} returned {[len(o) for o in outs]} completions for {len(trajs)} prompts x n={n}"
        )
    grown = [[fmt.extend(t, c) for c in cands] for t, cands in zip(trajs, outs, strict=True)]
    flat = [t for group in grown for t in group]
    flat = run_pending(flat, fmt, executor)
    it = iter(flat)
    return [[next(it) for _ in group] for group in grown]


def run_pending(trajs: list[Trajectory], fmt: TrajectoryFormat, executor: CodeExecutor | None) -> list[Trajectory]:
    """Run the code of every trajectory waiting on execution, in one batch, and apply the results."""
    waiting = [i for i, t in enumerate(trajs) if t.status == "exec"]
    if not waiting:
        return trajs
    if executor is None:
        raise EvalError(f"the {fmt.name} format executes the policy's code: pass an executor (rstar.verify.sandbox)")
    results = executor.run_batch([trajs[i].pending_code or "" for i in waiting])
    if len(results) != len(waiting):
        raise EvalError(f"executor returned {len(results)} results for {len(waiting)} programs")
    out = list(trajs)
    for i, res in zip(waiting, results, strict=True):
        out[i] = fmt.observe(trajs[i], res)
    return out


def rollout(
    trajs: Sequence[Trajectory],
    policy: PolicyLM,
    fmt: TrajectoryFormat,
    executor: CodeExecutor | None,
    *,
    temperature: float,
    top_p: float = 1.0,
    max_steps: int = 16,
    seed_of: Callable[[int, int], int] | None = None,
) -> list[Trajectory]:
    """Grow every trajectory one sample at a time until it finishes or reaches `max_steps` steps.

    `seed_of(i, depth)` gives the seed for trajectory i's next step (ignored at temperature 0).
    """
    out = list(trajs)
    while True:
        active = [i for i, t in enumerate(out) if not t.done]
        if not active:
            return out
        seeds = [seed_of(i, out[i].depth) for i in active] if seed_of is not None else None
        stepped = advance(
            [out[i] for i in active], policy, fmt, executor, temperature=temperature, top_p=top_p, n=1, seeds=seeds
        )
        for i, group in zip(active, stepped, strict=True):
            t = group[0]
            if not t.done and t.depth >= max_steps:
                t = replace(t, status="max_depth")
            out[i] = t


def score_texts(reward_model: RewardModel, texts: Sequence[str], batch_size: int = 64) -> list[float]:
    """PPM scores for full texts, in order, in batches of `batch_size`."""
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        got = reward_model.score(chunk)
        if len(got) != len(chunk):
            raise EvalError(f"reward model {reward_model.model_id} returned {len(got)} scores for {len(chunk)} texts")
        scores.extend(float(s) for s in got)
    return scores

"""Greedy decoding: one trajectory per problem at temperature 0; its answer is the prediction (budget ignored: 1)."""

from __future__ import annotations

from collections.abc import Sequence

from rstar.eval.engine import rollout
from rstar.eval.metrics import ProblemResult
from rstar.eval.modes.base import EvalContext, make_result
from rstar.eval.prompts import Trajectory
from rstar.types import Problem


def run(problems: Sequence[Problem], ctx: EvalContext, budget: int = 1) -> list[ProblemResult]:
    fmt = ctx.fmt()
    trajs = [Trajectory(fmt.prompt(p.question)) for p in problems]
    done = rollout(trajs, ctx.policy, fmt, ctx.executor, temperature=0.0, top_p=1.0, max_steps=ctx.config.max_steps)
    return [
        make_result(
            p, "greedy", 1, prediction=t.answer, answers=[t.answer], tokens=t.tokens, extra={"status": t.status}
        )
        for p, t in zip(problems, done, strict=True)
    ]

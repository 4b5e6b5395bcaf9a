"""Self-consistency, maj@k: k sampled trajectories per problem, the most common answer wins.

Answers vote by the grader's equivalence key (`answer_key`); samples without an answer do not vote; ties go to the
answer whose first sample came earliest (see `rstar.eval.metrics.majority_vote`). pass@k is reported from the same
k samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from rstar.eval.metrics import ProblemResult, majority_vote
from rstar.eval.modes.base import EvalContext, Grades, make_result, sample_trajectories
from rstar.types import Problem


def run(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    out = []
    for p, trajs in zip(problems, sample_trajectories(problems, ctx, budget), strict=True):
        answers = [t.answer for t in trajs]
        vote = majority_vote(answers)
        out.append(
            make_result(
                p,
                "maj",
                budget,
                prediction=vote.answer,
                answers=answers,
                tokens=sum(t.tokens for t in trajs),
                grades=Grades(p.answer),
                votes=vote.count,
            )
        )
    return out

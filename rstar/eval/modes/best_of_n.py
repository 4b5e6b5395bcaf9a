"""Best-of-N: N sampled trajectories per problem, each full trajectory scored by the PPM; the highest score wins.

Only trajectories that reached an answer are scored and ranked (one without an answer cannot supply a prediction);
ties go to the earlier sample. The samples are the same as maj@N's (same seeds), so the two differ only in selection.
"""

from __future__ import annotations

from collections.abc import Sequence

from rstar.eval.engine import score_texts
from rstar.eval.metrics import ProblemResult, best_by_score
from rstar.eval.modes.base import EvalContext, Grades, make_result, sample_trajectories
from rstar.types import Problem


def run(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    ppm = ctx.require_ppm("bon")
    per_problem = sample_trajectories(problems, ctx, budget)
    answered = [(i, j) for i, trajs in enumerate(per_problem) for j, t in enumerate(trajs) if t.answer is not None]
    flat_scores = score_texts(ppm, [per_problem[i][j].text for i, j in answered], ctx.config.ppm_batch_size)
    scores: list[list[float | None]] = [[None] * len(trajs) for trajs in per_problem]
    for (i, j), s in zip(answered, flat_scores, strict=True):
        scores[i][j] = s
    out = []
    for p, trajs, sc in zip(problems, per_problem, scores, strict=True):
        answers = [t.answer for t in trajs]
        best = best_by_score(answers, sc)
        out.append(
            make_result(
                p,
                "bon",
                budget,
                prediction=None if best is None else answers[best],
                answers=answers,
                scores=sc,
                tokens=sum(t.tokens for t in trajs),
                grades=Grades(p.answer),
                score=None if best is None else sc[best],
            )
        )
    return out

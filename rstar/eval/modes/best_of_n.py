"""Best-of-N and its weighted vote: N sampled trajectories per problem, each full trajectory scored by the PPM.

- `bon`: the highest score wins. Only trajectories that reached an answer are scored and ranked (one without an answer
  cannot supply a prediction); ties go to the earlier sample.
- `wmaj`: PPM-weighted majority over the same scored samples (`rstar.eval.metrics.weighted_majority`: every answer
  votes with `(1 + score) / 2`).

The samples are the same as maj@N's (same seeds), so the three differ only in selection; `bon` and `wmaj` in one run
also share the samples and the PPM's scores (`ctx.cache`), so the second costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from rstar.eval.engine import score_texts
from rstar.eval.metrics import ProblemResult, best_by_score, weighted_majority
from rstar.eval.modes.base import EvalContext, Grades, make_result, sample_trajectories
from rstar.types import Problem


def scored_samples(
    problems: Sequence[Problem], ctx: EvalContext, budget: int, mode: str
) -> tuple[list[tuple[list, list]], float]:
    """Per problem: `budget` sampled trajectories and their PPM scores (None where no answer), and each problem's
    share of the wall time that took; cached per run, so the rule that reads them second reports the same cost."""
    key = ("scored-samples", budget, tuple(p.id for p in problems))
    if key in ctx.cache:
        cached: tuple[list[tuple[list, list]], float] = ctx.cache[key]
        return cached
    ppm = ctx.require_ppm(mode)
    t0 = time.perf_counter()
    per_problem = sample_trajectories(problems, ctx, budget)
    answered = [(i, j) for i, trajs in enumerate(per_problem) for j, t in enumerate(trajs) if t.answer is not None]
    flat_scores = score_texts(ppm, [per_problem[i][j].text for i, j in answered], ctx.config.ppm_batch_size)
    scores: list[list[float | None]] = [[None] * len(trajs) for trajs in per_problem]
    for (i, j), s in zip(answered, flat_scores, strict=True):
        scores[i][j] = s
    out = [(list(trajs), sc) for trajs, sc in zip(per_problem, scores, strict=True)]
    ctx.cache[key] = (out, (time.perf_counter() - t0) / max(1, len(problems)))
    return ctx.cache[key]


def _results(problems: Sequence[Problem], ctx: EvalContext, budget: int, mode: str) -> list[ProblemResult]:
    samples, share = scored_samples(problems, ctx, budget, mode)
    out = []
    for p, (trajs, sc) in zip(problems, samples, strict=True):
        answers = [t.answer for t in trajs]
        votes: int | None = None
        if mode == "bon":
            pick = best_by_score(answers, sc)
        else:
            vote = weighted_majority(answers, sc)
            pick, votes = vote.first_index, (vote.count if vote.answer else None)
        out.append(
            make_result(
                p,
                mode,
                budget,
                prediction=None if pick is None else answers[pick],
                answers=answers,
                scores=sc,
                tokens=sum(t.tokens for t in trajs),
                grades=Grades(p.answer),
                score=None if pick is None else sc[pick],
                votes=votes,
            )
        )
    return [replace(r, wall_time_s=share) for r in out]


def run(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    """Best-of-N: the answer of the highest-scoring sample."""
    return _results(problems, ctx, budget, "bon")


def run_weighted(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    """PPM-weighted majority over the same N scored samples."""
    return _results(problems, ctx, budget, "wmaj")

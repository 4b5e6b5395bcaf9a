"""PPM-guided MCTS at test time, reusing the project's MCTS engine (`rstar.search`) in its "eval" mode.

The budget is the number of rollouts per problem. In eval mode there is no gold: every answer terminal is scored by
the PPM on its full trajectory and that score is backed up; new nodes start from their PPM score (the paper's
test-time search). The search runs once per (batch, budget) and every PPM answer rule reads the same tree:

- `mcts` (the paper): the answer of the answer terminal with the highest PPM score (ties: created first).
- `mcts-topk` (the reference implementation): majority vote, by the grader's equivalence key, over the
  `config.top_k` highest-scoring answer terminals; ties go to the higher-ranked answer.
- `mcts-wmaj`: PPM-weighted majority over every answer terminal of the same tree (each votes with `(1 + score) / 2`,
  `rstar.eval.metrics.weighted_majority`): the vote's use of answer frequency, discounted by the PPM's judgement.
- `mcts-plain` (the baseline): the same search at the same budget *without* the PPM (every score 0, so UCT explores
  by visit counts), answered by majority vote over all its answer terminals. "PPM-guided MCTS beats plain MCTS at
  equal budget" compares `mcts` with this.

pass@k counts the tree's answer terminals (n) and the correct ones among them (c). `tokens` is every token the
policy generated for the tree (dropped candidates included); wall time is the problem's share of the search's batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rstar.eval.engine import EvalError
from rstar.eval.metrics import ProblemResult, best_by_score, majority_vote, top_k_majority, weighted_majority
from rstar.eval.modes.base import EvalContext, Grades, make_result
from rstar.types import Problem


@dataclass(frozen=True)
class TreeOutcome:
    """What an answer rule needs from one problem's search: answer terminals in creation order, with PPM scores.

    Plain MCTS's outcomes carry None scores: no PPM judged those answers.
    """

    answers: tuple[str | None, ...]
    scores: tuple[float | None, ...]
    tokens: int
    wall_time_s: float
    rollouts: int
    nodes: int
    error: str | None = None


def search_config(ctx: EvalContext, budget: int, n_problems: int):  # -> rstar.config.SearchConfig
    """The engine's configuration for a test-time search with `budget` rollouts."""
    from rstar.config import SearchConfig

    c = ctx.config
    return SearchConfig(
        mode="eval",
        rollouts=budget,
        extra_rollouts_if_unsolved=0,
        candidates=c.mcts_candidates,
        max_depth=c.max_steps,
        c_uct=c.mcts_c_puct,
        temperature=c.temperature,
        top_p=c.top_p,
        max_step_tokens=c.max_step_tokens,
        max_active_trees=max(1, n_problems),
        seed=c.seed,
        # A dead model server makes every tree fail: give up on the batch after a few instead of all of them.
        abort_after_errors=min(3, max(1, n_problems)),
    )


class _NoPPM:
    """The reward model of plain MCTS: every prefix scores 0, so UCT explores by visit counts alone."""

    model_id = "none"

    def score(self, prefixes: Sequence[str]) -> list[float]:
        return [0.0] * len(prefixes)


def search(problems: Sequence[Problem], ctx: EvalContext, budget: int, *, plain: bool = False) -> list[TreeOutcome]:
    """Run (or reuse from `ctx.cache`) the eval-mode MCTS over `problems`; one outcome per problem, in order.

    `plain=True` searches without the PPM (all scores 0), the baseline of "PPM-guided MCTS vs plain MCTS"; its
    outcomes carry no scores (None), since those zeros are no PPM's judgement and would read as a chance ranking.
    """
    key = ("mcts-plain" if plain else "mcts", budget, tuple(p.id for p in problems))
    if key in ctx.cache:
        cached: list[TreeOutcome] = ctx.cache[key]
        return cached
    ppm = _NoPPM() if plain else ctx.require_ppm("mcts")
    if ctx.executor is None:
        raise EvalError("mode mcts executes the policy's code: pass an executor (rstar.verify.sandbox)")
    if ctx.config.format != "code":
        raise EvalError("the MCTS searches over code-augmented steps: use --format code")
    from rstar.search.driver import synthesize

    t0 = time.perf_counter()
    res = synthesize(problems, ctx.policy, ctx.executor, search_config(ctx, budget, len(problems)), reward_model=ppm)
    share = (time.perf_counter() - t0) / max(1, len(problems))
    by_id = {r.problem.id: r for r in res.results}
    outcomes = []
    for p in problems:
        r = by_id.get(p.id)
        if r is None:
            raise EvalError(f"the MCTS returned no result for problem {p.id}")
        terms = r.tree.answer_terminals()  # creation order
        outcomes.append(
            TreeOutcome(
                answers=tuple(n.answer for n in terms),
                scores=tuple(None if plain else (n.ppm_score if n.ppm_score is not None else n.reward) for n in terms),
                tokens=int(r.problem_row["tokens_generated"]),
                wall_time_s=share,
                rollouts=int(r.problem_row["rollouts"]),
                nodes=int(r.problem_row["nodes"]),
                error=r.error,
            )
        )
    ctx.cache[key] = outcomes
    return outcomes


def _result(p: Problem, mode: str, budget: int, o: TreeOutcome, pick: int | None, votes: int | None) -> ProblemResult:
    r = make_result(
        p,
        mode,
        budget,
        prediction=None if pick is None else o.answers[pick],
        answers=o.answers,
        scores=o.scores,
        tokens=o.tokens,
        grades=Grades(p.answer),
        score=None if pick is None else o.scores[pick],
        votes=votes,
        extra={"rollouts": o.rollouts, "nodes": o.nodes},
    )
    return replace(r, wall_time_s=o.wall_time_s, error=o.error)


def run_best(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    """The paper's rule: the highest-PPM answer trajectory."""
    out = []
    for p, o in zip(problems, search(problems, ctx, budget), strict=True):
        out.append(_result(p, "mcts", budget, o, best_by_score(o.answers, o.scores), None))
    return out


def run_topk(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    """The reference's rule: majority vote over the top-K PPM-ranked answers."""
    out = []
    for p, o in zip(problems, search(problems, ctx, budget), strict=True):
        vote = top_k_majority(o.answers, o.scores, ctx.config.top_k)
        out.append(_result(p, "mcts-topk", budget, o, vote.first_index, vote.count if vote.answer else None))
    return out


def run_weighted(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    """PPM-weighted majority over every answer terminal of the PPM-guided tree."""
    out = []
    for p, o in zip(problems, search(problems, ctx, budget), strict=True):
        vote = weighted_majority(o.answers, o.scores)
        out.append(_result(p, "mcts-wmaj", budget, o, vote.first_index, vote.count if vote.answer else None))
    return out


def run_plain(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    """MCTS without a PPM at the same budget: majority vote over every answer the search reached.

    The baseline against which PPM-guided MCTS is judged (the PPM is ignored even when one is given).
    """
    out = []
    for p, o in zip(problems, search(problems, ctx, budget, plain=True), strict=True):
        vote = majority_vote(list(o.answers))
        out.append(_result(p, "mcts-plain", budget, o, vote.first_index, vote.count if vote.answer else None))
    return out

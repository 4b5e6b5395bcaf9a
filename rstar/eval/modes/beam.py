"""Step-level beam search guided by the PPM.

The budget is the beam width W. Each round every live beam proposes `config.beam_candidates` next steps (one policy
call for all beams of all problems in the batch); code is executed (a step whose accumulated program fails is
dropped, as in the MCTS); identical candidates of a problem are merged; every surviving candidate is scored by the
PPM on its whole prefix. Candidates that reached an answer are set aside as finished, scored on the full trajectory
(at most W in all: when more finish in one round than there is room, the best-scored are kept); the best
`W - finished` open candidates become the next beams. The search stops when W trajectories have finished,
no beam is left, or `config.max_steps` steps were taken. The prediction is the highest-scoring finished trajectory's
answer (ties: the one finished first). `tokens` counts every candidate generated, pruned ones included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rstar.eval.engine import advance, score_texts
from rstar.eval.metrics import ProblemResult, best_by_score
from rstar.eval.modes.base import EvalContext, Grades, make_result
from rstar.eval.prompts import Trajectory
from rstar.seeds import stable_seed
from rstar.types import Problem


@dataclass
class _Search:
    problem: Problem
    active: list[Trajectory]
    finished: list[tuple[Trajectory, float]] = field(default_factory=list)
    tokens: int = 0
    dropped: int = 0


def run(problems: Sequence[Problem], ctx: EvalContext, budget: int) -> list[ProblemResult]:
    ppm = ctx.require_ppm("beam")
    fmt = ctx.fmt(stepwise=True)
    c = ctx.config
    width = budget
    searches = [_Search(p, [Trajectory(fmt.prompt(p.question))]) for p in problems]
    for depth in range(c.max_steps):
        live = [s for s in searches if s.active and len(s.finished) < width]
        if not live:
            break
        parents = [(s, b, t) for s in live for b, t in enumerate(s.active)]
        seeds = [stable_seed(c.seed, s.problem.id, "beam", depth, b) for s, b, _ in parents]
        grown = advance(
            [t for _, _, t in parents],
            ctx.policy,
            fmt,
            ctx.executor,
            temperature=c.temperature,
            top_p=c.top_p,
            n=c.beam_candidates,
            seeds=seeds,
        )
        pool: dict[int, list[Trajectory]] = {id(s): [] for s in live}
        seen: dict[int, set[str]] = {id(s): set() for s in live}
        for (s, _, parent), cands in zip(parents, grown, strict=True):
            for cand in cands:
                s.tokens += cand.tokens - parent.tokens
                keep = cand.status in ("open", "answer") and cand.text not in seen[id(s)]
                if keep and cand.status == "open" and depth + 1 >= c.max_steps:
                    keep = False  # would exceed the depth limit without an answer
                if keep:
                    seen[id(s)].add(cand.text)
                    pool[id(s)].append(cand)
                else:
                    s.dropped += 1
        flat = [(s, t) for s in live for t in pool[id(s)]]
        scores = score_texts(ppm, [t.text for _, t in flat], c.ppm_batch_size)
        new_open: dict[int, list[tuple[Trajectory, float]]] = {id(s): [] for s in live}
        new_done: dict[int, list[tuple[Trajectory, float]]] = {id(s): [] for s in live}
        for (s, t), sc in zip(flat, scores, strict=True):
            (new_done if t.status == "answer" else new_open)[id(s)].append((t, sc))
        for s in live:
            # Best first; `sorted` is stable, so equal scores keep generation order.
            done = sorted(new_done[id(s)], key=lambda e: -e[1])
            s.finished.extend(done[: max(0, width - len(s.finished))])
            room = max(0, width - len(s.finished))
            s.active = [t for t, _ in sorted(new_open[id(s)], key=lambda e: -e[1])[:room]]

    out = []
    for s in searches:
        finished = s.finished
        answers = [t.answer for t, _ in finished]
        scores_: list[float | None] = [sc for _, sc in finished]
        best = best_by_score(answers, scores_)
        out.append(
            make_result(
                s.problem,
                "beam",
                budget,
                prediction=None if best is None else answers[best],
                answers=answers,
                scores=scores_,
                tokens=s.tokens,
                grades=Grades(s.problem.answer),
                score=None if best is None else scores_[best],
                extra={"dropped": s.dropped},
            )
        )
    return out

"""Accuracy arithmetic: per-problem results, majority votes, PPM picks, the unbiased pass@k, per-cell summaries.

Everything here is pure and deterministic so that tests can check it exactly with scripted answers:

- `majority_vote(answers)`: answers are grouped by the grader's equivalence key (`rstar.verify.answer.answer_key`), so
  `0.5`, `1/2` and `\\frac{1}{2}` vote together. Samples without an answer do not vote. **Ties** go to the group whose
  first member came earliest in sample order (sample i is drawn with a seed derived from the problem id and i, so
  the order, and therefore the winner, is reproducible). The winning group's first answer string is the prediction.
- `best_by_score(answers, scores)`: the highest-scoring sample that has an answer; ties to the earliest sample.
- `top_k_majority(answers, scores, k)`: the majority of the k highest-scoring samples (the reference's MCTS rule).
- `weighted_majority(answers, scores)`: every scored answer votes with weight `(1 + score) / 2` (a PPM's tanh score
  as a probability), so the PPM discounts the trajectories it judges wrong without ignoring how often an answer
  was reached.
- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021), `1 - C(n-c, k) / C(n, k)`: the probability that
  at least one of k samples drawn without replacement from the n generated (c of them correct) is correct.
- `summarize(results)`: one `CellSummary` per (benchmark, mode, budget): accuracy (errors count as wrong), mean
  pass@1 (= c/n) and pass@k (k = the budget), tokens and wall time per problem, and for the modes that choose among
  several answers why they did or did not do better: `covered` (problems where some sample is correct: the ceiling of
  any answer rule), `mixed` (problems with correct and wrong samples: the only ones an answer rule can decide) and
  `ranking_accuracy` (how often the PPM scores a problem's correct sample above its wrong one).
- `ranking_accuracy(results)`: over every (correct, wrong) pair of scored samples of one problem, the share the
  scores order correctly (ties count half): the PPM's pairwise accuracy where it is used, on the policy's own samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProblemResult:
    """The outcome of one problem under one (benchmark, mode, budget) cell; one row of `results.parquet`.

    `n_samples` / `n_correct` count the finished trajectories the mode produced and how many reached a correct
    answer (for pass@k); `answers` / `scores` list every sample's answer (None: no answer) and PPM score (None: not
    scored) in sample order. `tokens` counts every token the policy generated for this problem, pruned candidates
    included. `wall_time_s` is the problem's share of its batch's wall time. `error` is set when the problem could not
    be evaluated (e.g. the model server was unreachable); such a problem counts as wrong.
    """

    benchmark: str
    mode: str
    budget: int
    problem_id: str
    problem: str
    gold: str
    prediction: str | None
    correct: bool
    n_samples: int = 0
    n_correct: int = 0
    tokens: int = 0
    wall_time_s: float = 0.0
    level: str | None = None
    subject: str | None = None
    score: float | None = None  # PPM score of the trajectory whose answer was picked (BoN, beam, MCTS)
    votes: int | None = None  # support of the picked answer (maj, wmaj, mcts-topk, mcts-wmaj)
    answers: tuple[str | None, ...] = ()
    scores: tuple[float | None, ...] = ()
    sample_correct: tuple[bool, ...] = ()  # per sample of `answers`: graded correct (empty: not recorded)
    grade_method: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["answers"] = list(self.answers)
        row["scores"] = list(self.scores)
        row["sample_correct"] = list(self.sample_correct)
        row.pop("extra")
        return row


# --------------------------------------------------------------------------------------------------------------------
# Estimators and answer selection


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: `1 - C(n-c, k) / C(n, k)`, computed as a stable product.

    k larger than n is clamped to n (with fewer samples than k, "any of the n is correct" is the best estimate).
    """
    if n < 0 or c < 0 or c > n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if n == 0:
        return 0.0
    k = min(k, n)
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote: the winning answer, its support and where its group first appeared."""

    answer: str | None
    count: int
    voters: int  # samples that had an answer
    first_index: int | None  # sample index of the winning group's first member
    tally: dict[str, int] = field(default_factory=dict, compare=False)


def majority_vote(answers: Sequence[str | None], key: Callable[[str], str] | None = None) -> Vote:
    """Most common answer by equivalence key; ties to the group that appeared first; None answers do not vote."""
    return _vote(answers, [1.0] * len(answers), key)


def _vote(answers: Sequence[str | None], weights: Sequence[float | None], key: Callable[[str], str] | None) -> Vote:
    """The vote both rules share: groups by equivalence key, the largest total weight wins, then the larger group,
    then the group whose first member came earliest; answers that are blank or weighted None do not vote."""
    keyf = key if key is not None else _default_key
    groups: dict[str, list[int]] = {}
    total: dict[str, float] = {}
    for i, (a, w) in enumerate(zip(answers, weights, strict=True)):
        if a is None or not str(a).strip() or w is None:
            continue
        k = keyf(a)
        groups.setdefault(k, []).append(i)
        total[k] = total.get(k, 0.0) + w
    if not groups:
        return Vote(None, 0, 0, None, {})
    best_key = max(groups, key=lambda k: (round(total[k], 12), len(groups[k]), -groups[k][0]))
    first = groups[best_key][0]
    return Vote(
        answer=answers[first],
        count=len(groups[best_key]),
        voters=sum(len(v) for v in groups.values()),
        first_index=first,
        tally={k: len(v) for k, v in groups.items()},
    )


def best_by_score(answers: Sequence[str | None], scores: Sequence[float | None]) -> int | None:
    """Index of the highest-scoring sample that has an answer and a score; ties to the earliest; None if none."""
    if len(answers) != len(scores):
        raise ValueError("answers and scores must have the same length")
    best: int | None = None
    for i, (a, s) in enumerate(zip(answers, scores, strict=True)):
        if a is None or s is None:
            continue
        if best is None or s > scores[best]:  # type: ignore[operator]
            best = i
    return best


def top_k_majority(answers: Sequence[str | None], scores: Sequence[float | None], k: int, key=None) -> Vote:
    """The reference's MCTS answer rule: majority vote over the k highest-scoring answered samples.

    Candidates are ranked by score (ties: earlier sample first); the vote among the top k breaks its own ties by that
    rank order, so with k=1 this is `best_by_score`.
    """
    if k < 1:
        raise ValueError(f"top_k_majority needs k >= 1, got {k}")
    ranked = sorted(
        (i for i, (a, s) in enumerate(zip(answers, scores, strict=True)) if a is not None and s is not None),
        key=lambda i: (-scores[i], i),  # type: ignore[operator]
    )[:k]
    vote = majority_vote([answers[i] for i in ranked], key=key)
    first = None if vote.first_index is None else ranked[vote.first_index]
    return Vote(vote.answer, vote.count, vote.voters, first, vote.tally)


def score_weight(score: float) -> float:
    """A PPM score's vote in `weighted_majority`: `(1 + s) / 2`, s clipped to [-1, 1].

    The PPM's inference score is `tanh(r)` of its Bradley-Terry reward r, so the weight is `sigmoid(2r)`: the modelled
    probability that the trajectory beats a neutral one. A trajectory the PPM rejects outright (s = -1) adds nothing,
    one it is sure of (s = 1) a full vote, and a PPM without an opinion (every s = 0) gives every answer half a vote,
    which is the plain majority vote.
    """
    return (1.0 + min(1.0, max(-1.0, float(score)))) / 2.0


def weighted_majority(answers: Sequence[str | None], scores: Sequence[float | None], key=None) -> Vote:
    """PPM-weighted majority vote: each scored answer votes with `score_weight(score)` for its equivalence group.

    The verifier-weighted vote of DiVeRSe (Li et al., 2023) and Math-Shepherd (Wang et al., 2024): it keeps the
    vote's use of how often the policy reaches an answer and lets the PPM discount the trajectories it judges wrong,
    so a judge too noisy to pick one trajectory (`best_by_score`) can still move a close vote. Samples without an
    answer or a finite score do not vote. Ties in total weight go to the larger group, then to the group whose first
    member came earliest. `count` is the winning group's size (not its weight); `tally` counts members per group.
    """
    if len(answers) != len(scores):
        raise ValueError("answers and scores must have the same length")
    weights = [None if s is None or not math.isfinite(float(s)) else score_weight(s) for s in scores]
    return _vote(answers, weights, key)


def _default_key(answer: str) -> str:
    from rstar.verify.answer import answer_key

    return answer_key(answer)


# --------------------------------------------------------------------------------------------------------------------
# Summaries


@dataclass(frozen=True)
class CellSummary:
    """Aggregate of one (benchmark, mode, budget) cell: the numbers the table and the scaling curve show."""

    benchmark: str
    mode: str
    budget: int
    problems: int
    correct: int
    accuracy: float  # correct / problems; problems with an error count as wrong
    pass_at_1: float  # mean c/n over problems (0 for a problem with no finished sample)
    pass_at_k: float  # mean unbiased pass@budget
    errors: int
    mean_tokens: float
    mean_wall_time_s: float
    total_wall_time_s: float
    answered: int  # problems with a prediction
    covered: int = 0  # problems with at least one correct sample: the most any answer rule could get right
    mixed: int = 0  # problems with both correct and wrong samples: the only ones where the answer rule matters
    ranking_accuracy: float | None = None  # PPM pairwise accuracy on the samples (None: unscored or nothing mixed)

    @property
    def label(self) -> str:
        return mode_label(self.mode, self.budget)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["label"] = self.label
        return d


def mode_label(mode: str, budget: int) -> str:
    """`greedy`, `maj@8`, `bon@16`, `wmaj@16`, `beam@4`, `mcts@8`, `mcts-topk@8`, `mcts-wmaj@8`."""
    return mode if mode == "greedy" else f"{mode}@{budget}"


def summarize(results: Iterable[ProblemResult]) -> list[CellSummary]:
    """One summary per (benchmark, mode, budget) cell, in first-seen order."""
    cells: dict[tuple[str, str, int], list[ProblemResult]] = {}
    for r in results:
        cells.setdefault((r.benchmark, r.mode, r.budget), []).append(r)
    return [summarize_cell(rs) for rs in cells.values()]


def summarize_cell(rs: Sequence[ProblemResult]) -> CellSummary:
    if not rs:
        raise ValueError("summarize_cell needs at least one result")
    first = rs[0]
    n = len(rs)
    correct = sum(r.correct for r in rs)
    p1 = [r.n_correct / r.n_samples if r.n_samples else 0.0 for r in rs]
    pk = [pass_at_k(r.n_samples, r.n_correct, r.budget) if r.n_samples else 0.0 for r in rs]
    total_time = sum(r.wall_time_s for r in rs)
    return CellSummary(
        benchmark=first.benchmark,
        mode=first.mode,
        budget=first.budget,
        problems=n,
        correct=correct,
        accuracy=correct / n,
        pass_at_1=sum(p1) / n,
        pass_at_k=sum(pk) / n,
        errors=sum(r.error is not None for r in rs),
        mean_tokens=sum(r.tokens for r in rs) / n,
        mean_wall_time_s=total_time / n,
        total_wall_time_s=total_time,
        answered=sum(r.prediction is not None for r in rs),
        covered=sum(r.n_correct > 0 for r in rs),
        mixed=sum(0 < r.n_correct < r.n_samples for r in rs),
        ranking_accuracy=ranking_accuracy(rs),
    )


def ranking_accuracy(rs: Iterable[ProblemResult]) -> float | None:
    """Share of within-problem (correct, wrong) sample pairs whose scores put the correct one higher; ties count half.

    Only samples with an answer, a score and a recorded grade take part; pairs never mix two problems, so a PPM that
    merely tells easy problems from hard ones scores 0.5 here. None when no problem has a scored correct and wrong pair.
    """
    won = 0.0
    pairs = 0
    for r in rs:
        if len(r.sample_correct) != len(r.answers) or len(r.scores) != len(r.answers):
            continue
        scored = [
            (s, ok)
            for a, s, ok in zip(r.answers, r.scores, r.sample_correct, strict=True)
            if a is not None and s is not None
        ]
        w, n = pairs_won(scored)
        won += w
        pairs += n
    return won / pairs if pairs else None


def pairs_won(scored: Iterable[tuple[float, bool]]) -> tuple[float, int]:
    """Of one problem's (score, correct) samples: the (correct, wrong) pairs the scores order right (ties count
    half) and how many such pairs there are."""
    items = list(scored)
    good = [s for s, ok in items if ok]
    bad = [s for s, ok in items if not ok]
    won = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad)
    return won, len(good) * len(bad)


def breakdown(results: Iterable[ProblemResult], by: str) -> list[dict[str, Any]]:
    """Accuracy per (benchmark, mode, budget, group) where group is a result attribute (`level` or `subject`).

    Results without a value for `by` are left out (only MATH500 has levels and subjects).
    """
    groups: dict[tuple[str, str, int, str], list[bool]] = {}
    cells: dict[tuple[str, str, int], int] = {}
    for r in results:
        value = getattr(r, by)
        if value is None:
            continue
        cells.setdefault((r.benchmark, r.mode, r.budget), len(cells))
        groups.setdefault((r.benchmark, r.mode, r.budget, str(value)), []).append(r.correct)
    rows = [
        {
            "benchmark": b,
            "mode": m,
            "budget": k,
            "label": mode_label(m, k),
            by: g,
            "problems": len(v),
            "correct": sum(v),
            "accuracy": sum(v) / len(v),
        }
        for (b, m, k, g), v in groups.items()
    ]
    # Cells in the order the run produced them, groups in natural order (level 2 before level 10).
    return sorted(rows, key=lambda d: (cells[(d["benchmark"], d["mode"], d["budget"])], _natural(d[by])))


def _natural(text: str) -> tuple[int, Any]:
    return (0, int(text)) if text.isdigit() else (1, text)

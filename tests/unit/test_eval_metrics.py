"""Accuracy arithmetic of the eval harness: pass@k, majority votes and their ties, PPM picks, cell summaries."""

from __future__ import annotations

import itertools
import math

import pytest

from rstar.eval.metrics import (
    ProblemResult,
    best_by_score,
    breakdown,
    majority_vote,
    mode_label,
    pass_at_k,
    ranking_accuracy,
    score_weight,
    summarize,
    top_k_majority,
    weighted_majority,
)


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one correct among k of n drawn without replacement), by enumerating every k-subset."""
    items = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_known_values() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(4, 1, 8) == 1.0  # k > n is clamped to n: any of the 4 is correct
    assert pass_at_k(0, 0, 1) == 0.0


@pytest.mark.parametrize(("n", "c", "k"), [(3, 4, 1), (-1, 0, 1), (3, 1, 0)])
def test_pass_at_k_rejects_nonsense(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_groups_equivalent_answers() -> None:
    vote = majority_vote(["\\frac{1}{2}", "3", "0.5", "1/2", None, "3"])
    assert vote.answer == "\\frac{1}{2}"  # the group's first member is reported
    assert (vote.count, vote.voters, vote.first_index) == (3, 5, 0)


def test_majority_vote_tie_goes_to_the_earliest_group() -> None:
    assert majority_vote(["3", "5", "5", "3"]).answer == "3"
    assert majority_vote(["5", "3", "3", "5"]).answer == "5"
    # A later, larger group still wins over an earlier smaller one.
    assert majority_vote(["7", "5", "5"]).answer == "5"
    # Three-way tie: the first sample's answer.
    assert majority_vote([None, "2", "1", "3"]).answer == "2"


def test_majority_vote_without_answers() -> None:
    vote = majority_vote([None, None, " "])
    assert vote.answer is None and vote.count == 0 and vote.first_index is None


def test_best_by_score_picks_the_highest_and_breaks_ties_by_order() -> None:
    assert best_by_score(["1", "2", "3"], [0.1, 0.9, 0.5]) == 1
    assert best_by_score(["1", "2", "3"], [0.7, 0.2, 0.7]) == 0
    assert best_by_score([None, "2", "3"], [0.99, -0.5, None]) == 1  # no answer / no score: not a candidate
    assert best_by_score([None, None], [0.3, 0.4]) is None
    with pytest.raises(ValueError):
        best_by_score(["1"], [0.1, 0.2])


def test_top_k_majority_votes_among_the_k_best_scored() -> None:
    answers = ["a", "b", "b", "c", "a"]
    scores = [0.9, 0.8, 0.7, 0.95, 0.1]
    # top 3 by score: c (0.95), a (0.9), b (0.8): a three-way tie, won by the best-ranked (c)
    vote = top_k_majority(answers, scores, 3)
    assert (vote.answer, vote.count, vote.first_index) == ("c", 1, 3)
    # top 4 adds the second b: b wins 2 to 1
    vote = top_k_majority(answers, scores, 4)
    assert (vote.answer, vote.count, vote.first_index) == ("b", 2, 1)
    # k = 1 is best-of-n
    assert top_k_majority(answers, scores, 1).first_index == best_by_score(answers, scores) == 3
    # all five: a and b have 2 each; a is ranked higher (0.9 > 0.8)
    assert top_k_majority(answers, scores, 5).answer == "a"
    with pytest.raises(ValueError):
        top_k_majority(answers, scores, 0)


def test_weighted_majority_sums_score_weights_per_equivalence_group() -> None:
    assert [score_weight(s) for s in (-1.0, 0.0, 0.5, 1.0, 3.0, -7.0)] == [0.0, 0.5, 0.75, 1.0, 1.0, 0.0]
    # 1/2 and 0.5 are one answer: 0.9 + 0.8 = 1.7 beats the single best-scored "2" (0.99 -> 0.995)
    vote = weighted_majority(["2", "1/2", "0.5", "3"], [0.99, 0.8, 0.6, 0.1])
    assert (vote.answer, vote.count, vote.voters, vote.first_index) == ("1/2", 2, 4, 1)
    # a frequent answer the PPM rejects loses to a rare one it trusts: "7" x3 at -0.9 (0.15 total) vs "8" at 0.5 (0.75)
    vote = weighted_majority(["7", "7", "8", "7"], [-0.9, -0.9, 0.5, -0.9])
    assert (vote.answer, vote.first_index) == ("8", 2)
    # an indifferent PPM (all 0) is the plain vote, ties included (to the group that appeared first)
    for answers in (["3", "5", "5", "3"], ["a", "b", "b", "c"], ["x", None, "y"]):
        assert weighted_majority(answers, [0.0] * len(answers)).first_index == majority_vote(answers).first_index
    # equal weight: the larger group, then the earlier group
    assert weighted_majority(["a", "b", "b"], [1.0, 0.0, 0.0]).answer == "b"
    assert weighted_majority(["a", "b"], [0.2, 0.2]).answer == "a"
    # no answer, no score or a non-finite score: no vote
    vote = weighted_majority([None, "4", "5", "6"], [1.0, None, float("nan"), -0.5])
    assert (vote.answer, vote.voters) == ("6", 1)
    assert weighted_majority([None], [0.3]).answer is None
    with pytest.raises(ValueError):
        weighted_majority(["1"], [0.1, 0.2])


def _r(mode: str, budget: int, correct: bool, n: int, c: int, **kw: object) -> ProblemResult:
    return ProblemResult(
        benchmark=str(kw.pop("benchmark", "b")),
        mode=mode,
        budget=budget,
        problem_id=str(kw.pop("pid", "p")),
        problem="q",
        gold="1",
        prediction="1" if correct else None,
        correct=correct,
        n_samples=n,
        n_correct=c,
        **kw,  # type: ignore[arg-type]
    )


def test_summarize_cell_arithmetic() -> None:
    rs = [
        _r("maj", 4, True, 4, 2, tokens=100, wall_time_s=1.0, level="1"),
        _r("maj", 4, False, 4, 0, tokens=300, wall_time_s=3.0, level="1"),
        _r("maj", 4, False, 0, 0, error="ConnectionError: down", level="2"),
        _r("greedy", 1, True, 1, 1, tokens=50),
    ]
    cells = {s.label: s for s in summarize(rs)}
    maj = cells["maj@4"]
    assert (maj.problems, maj.correct, maj.errors, maj.answered) == (3, 1, 1, 1)
    assert maj.accuracy == pytest.approx(1 / 3)  # the failed problem counts as wrong
    assert maj.pass_at_1 == pytest.approx((2 / 4 + 0 + 0) / 3)
    assert maj.pass_at_k == pytest.approx((1.0 + 0 + 0) / 3)
    assert maj.mean_tokens == pytest.approx(400 / 3)
    assert maj.total_wall_time_s == pytest.approx(4.0)
    assert cells["greedy"].accuracy == 1.0 and cells["greedy"].pass_at_k == 1.0
    levels = breakdown(rs, "level")
    assert [(d["level"], d["problems"], d["correct"]) for d in levels] == [("1", 2, 1), ("2", 1, 0)]


def test_covered_mixed_and_ppm_rank_say_where_an_answer_rule_could_help() -> None:
    def scored(pid: str, answers: list[str | None], scores: list[float | None], ok: list[bool]) -> ProblemResult:
        return _r("mcts", 8, False, len(answers), sum(ok), pid=pid, answers=tuple(answers), scores=tuple(scores),
                  sample_correct=tuple(ok))  # fmt: skip

    rs = [
        # 2 correct x 1 wrong: 0.9 > 0.1 right, 0.1 == 0.1 a tie (half) -> 1.5 of 2
        scored("a", ["1", "1", "2"], [0.9, 0.1, 0.1], [True, True, False]),
        # 1 x 2: 0.2 < 0.5 wrong, 0.2 > -1 right; an unscored and an unanswered sample take no part -> 1 of 2
        scored("b", ["1", "3", "4", "5", None], [0.2, 0.5, -1.0, None, 0.9], [True, False, False, False, False]),
        # all correct / all wrong: covered or not, never mixed, no pairs
        scored("c", ["1", "1"], [0.3, 0.4], [True, True]),
        scored("d", ["7"], [0.99], [False]),
    ]
    (cell,) = summarize(rs)
    assert (cell.covered, cell.mixed) == (3, 2)
    assert cell.ranking_accuracy == pytest.approx((1.5 + 1.0) / 4)
    # A PPM that ranks problems, not answers, is no better than chance here: pairs never cross problems.
    assert ranking_accuracy([scored("e", ["1", "2"], [0.9, 0.9], [True, False])]) == 0.5
    # Unscored modes and results without per-sample grades have no ranking accuracy.
    assert ranking_accuracy([_r("maj", 4, True, 2, 1, answers=("1", "2"), sample_correct=(True, False))]) is None
    assert ranking_accuracy([_r("mcts", 4, True, 2, 1, answers=("1", "2"), scores=(0.5, 0.1))]) is None


def test_mode_labels() -> None:
    assert mode_label("greedy", 1) == "greedy"
    assert mode_label("maj", 8) == "maj@8"
    assert mode_label("mcts-topk", 16) == "mcts-topk@16"

"""Every inference mode's accuracy arithmetic, checked exactly with scripted policies whose answers are known.

The scripted policy answers sample j of problem p with `ANSWERS[p][j]`: it recognises the sample by the seed the
harness derives from (run seed, problem id, j, depth), which is also what makes samples reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from rstar.eval.config import EvalConfig
from rstar.eval.engine import EvalError
from rstar.eval.metrics import summarize
from rstar.eval.modes import MODES, EvalContext, resolve_mode
from rstar.eval.modes import mcts as mcts_mode
from rstar.models.fakes import FunctionRewardModel, InProcessExecutor
from rstar.seeds import stable_seed
from rstar.types import Completion, Problem, SamplingSpec
from rstar.verify.steps import END_OF_ANSWER, END_OF_CODE, END_OF_STEP, build_prompt

Reply = tuple[str, str | None]  # (text, stop string)


class SeedPolicy:
    """Completions from `fn(prompt, seed, n)`; counts calls. 7 tokens per completion."""

    def __init__(self, fn: Callable[[str, int | None, int], Sequence[Reply]]) -> None:
        self.fn = fn
        self.calls = 0
        self.prompts: list[str] = []

    @property
    def model_id(self) -> str:
        return "test:seed-policy"

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        self.calls += 1
        self.prompts += list(prompts)
        out = []
        for i, prompt in enumerate(prompts):
            replies = list(self.fn(prompt, None if seeds is None else seeds[i], spec.n))
            assert len(replies) == spec.n
            out.append([Completion(text=t, stop_reason=s, num_tokens=7) for t, s in replies])
        return out


def boxed(answer: str, tag: str = "") -> Reply:
    return (f"# {tag}\nThe answer is \\boxed{{{answer}}}", END_OF_ANSWER)


P1 = Problem("p1", "What is two plus three?", "5", source="toy")
P2 = Problem("p2", "What is half of one?", "1/2", source="toy")
ANSWERS: dict[str, list[str | None]] = {
    "p1": ["3", "5", "5", "3"],  # 2-2 tie: "3" came first, so maj@4 is wrong; pass@1 = 0.5
    "p2": ["\\frac{1}{2}", "2", "0.5", None],  # 1/2 twice (equivalent forms): maj@4 right
}
QUESTIONS = {P1.question: P1, P2.question: P2}


def sample_index(problem: Problem, seed: int | None, k: int = 8) -> int:
    for j in range(k):
        if stable_seed(0, problem.id, j, 0) == seed:
            return j
    raise AssertionError(f"unexpected seed {seed} for {problem.id}")


def problem_of(prompt: str) -> Problem:
    for q, p in QUESTIONS.items():
        if q in prompt:
            return p
    raise AssertionError("unknown prompt")


def one_step_policy(greedy: dict[str, str] | None = None) -> SeedPolicy:
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        p = problem_of(prompt)
        if seed is None:
            return [boxed((greedy or {})[p.id], "greedy")] * n
        j = sample_index(p, seed)
        ans = ANSWERS[p.id][j]
        return [boxed(ans, f"sample {j}") if ans is not None else ("# I give up", None)] * n

    return SeedPolicy(fn)


def ctx_for(policy: SeedPolicy, ppm: FunctionRewardModel | None = None, **cfg: object) -> EvalContext:
    return EvalContext(
        policy=policy,
        config=EvalConfig(**cfg),  # type: ignore[arg-type]
        executor=InProcessExecutor(),
        reward_model=ppm,
    )


def test_mode_names_and_aliases() -> None:
    assert set(MODES) == {"greedy", "maj", "bon", "wmaj", "beam", "mcts", "mcts-topk", "mcts-wmaj", "mcts-plain"}
    assert resolve_mode("Majority") == "maj" and resolve_mode("best-of-n") == "bon"
    assert resolve_mode("weighted-maj") == "wmaj" and resolve_mode("MCTS-weighted") == "mcts-wmaj"
    with pytest.raises(ValueError, match="greedy, maj, bon"):
        resolve_mode("dvts")


def test_greedy_runs_code_and_counts_tokens() -> None:
    # Two steps: an intermediate step, then a final code step whose printed value is the answer.
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        assert seed is None  # greedy passes no seeds
        if END_OF_STEP not in prompt:
            return [("# Step 1: add\nx = 2 + 3", END_OF_STEP)]
        return [("# Now print the final answer\nprint(x)", END_OF_CODE)]

    policy = SeedPolicy(fn)
    [r] = MODES["greedy"]([P1], ctx_for(policy), 1)
    assert (r.prediction, r.correct, r.n_samples, r.n_correct, r.tokens) == ("5", True, 1, 1, 14)
    assert policy.calls == 2
    assert policy.prompts[0] == build_prompt(P1.question)
    assert r.extra["status"] == "answer"


def test_greedy_code_error_gives_no_answer() -> None:
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        return [("print(1/0)", END_OF_CODE)]

    [r] = MODES["greedy"]([P1], ctx_for(SeedPolicy(fn)), 1)
    assert r.prediction is None and not r.correct and r.extra["status"] == "code_error"


def test_greedy_stops_at_max_steps() -> None:
    policy = SeedPolicy(lambda prompt, seed, n: [("x = 1", END_OF_STEP)])
    [r] = MODES["greedy"]([P1], ctx_for(policy, max_steps=3), 1)
    assert policy.calls == 3 and r.prediction is None and r.extra["status"] == "max_depth"


def test_majority_vote_arithmetic_and_ties() -> None:
    r1, r2 = MODES["maj"]([P1, P2], ctx_for(one_step_policy()), 4)
    assert (r1.prediction, r1.correct, r1.votes, r1.n_samples, r1.n_correct) == ("3", False, 2, 4, 2)
    assert r1.answers == ("3", "5", "5", "3")
    assert (r2.prediction, r2.correct, r2.votes, r2.n_correct) == ("\\frac{1}{2}", True, 2, 2)
    assert r2.answers == ("\\frac{1}{2}", "2", "0.5", None)
    assert r1.tokens == 4 * 7


def test_majority_samples_are_prefixes_of_larger_budgets() -> None:
    (small,) = MODES["maj"]([P1], ctx_for(one_step_policy()), 2)
    (large,) = MODES["maj"]([P1], ctx_for(one_step_policy()), 4)
    assert large.answers[:2] == small.answers == ("3", "5")
    assert small.prediction == "3"  # 1-1 tie: the first sample's answer


def scripted_ppm(table: dict[str, float]) -> FunctionRewardModel:
    """Score a prefix by the last `# tag` marker it contains."""

    def fn(prefix: str) -> float:
        best, pos = 0.0, -1
        for tag, s in table.items():
            at = prefix.rfind(f"# {tag}\n")
            if at > pos:
                best, pos = s, at
        return best

    return FunctionRewardModel(fn)


def test_best_of_n_picks_the_highest_ppm_score() -> None:
    ppm = scripted_ppm({"sample 0": 0.1, "sample 1": 0.3, "sample 2": 0.9, "sample 3": 0.2})
    r1, r2 = MODES["bon"]([P1, P2], ctx_for(one_step_policy(), ppm), 4)
    # p1: sample 2 ("5") has the top score, so BoN is right where maj@4 was wrong
    assert (r1.prediction, r1.correct, r1.score) == ("5", True, 0.9)
    assert r1.scores == (0.1, 0.3, 0.9, 0.2)
    # p2: sample 2 is "0.5" (right); sample 3 has no answer and is not scored
    assert (r2.prediction, r2.correct) == ("0.5", True)
    assert r2.scores == (0.1, 0.3, 0.9, None)
    assert ppm.prefixes == 7
    # every sample's grade is kept beside its answer, so the PPM's ranking can be judged after the fact
    assert len(r1.sample_correct) == len(r1.answers) == 4 and r1.sample_correct[2] is True
    assert r1.sample_correct.count(True) == r1.n_correct
    (cell,) = summarize([r1])
    assert cell.mixed == 1 and cell.ranking_accuracy is not None


def test_weighted_majority_shares_best_of_n_samples_and_scores() -> None:
    # p1 answers 3, 5, 5, 3. Best-of-4 takes sample 0 ("3", 0.9); the weighted vote sums (1 + s) / 2 per answer:
    # "3": 0.95 + 0.0 = 0.95, "5": 0.6 + 0.6 = 1.2, so "5" wins although the single best score is a "3".
    ppm = scripted_ppm({"sample 0": 0.9, "sample 1": 0.2, "sample 2": 0.2, "sample 3": -1.0})
    policy = one_step_policy()
    ctx = ctx_for(policy, ppm)
    (best,) = MODES["bon"]([P1], ctx, 4)
    calls, scored = policy.calls, ppm.prefixes
    (weighted,) = MODES["wmaj"]([P1], ctx, 4)
    assert (best.prediction, best.correct) == ("3", False)
    assert (weighted.prediction, weighted.correct, weighted.votes, weighted.score) == ("5", True, 2, 0.2)
    assert weighted.answers == best.answers and weighted.scores == best.scores
    assert (policy.calls, ppm.prefixes) == (calls, scored)  # one sampling and one scoring serve both rules
    assert weighted.wall_time_s == best.wall_time_s > 0  # and both report what they cost
    with pytest.raises(EvalError, match="PPM"):
        MODES["wmaj"]([P1], ctx_for(one_step_policy()), 4)


def test_weighted_majority_with_an_indifferent_ppm_is_the_plain_vote() -> None:
    ppm = scripted_ppm({})  # every score 0: half a vote each
    r1, r2 = MODES["wmaj"]([P1, P2], ctx_for(one_step_policy(), ppm), 4)
    m1, m2 = MODES["maj"]([P1, P2], ctx_for(one_step_policy()), 4)
    assert (r1.prediction, r2.prediction) == (m1.prediction, m2.prediction) == ("3", "\\frac{1}{2}")


def test_best_of_n_ties_go_to_the_earlier_sample_and_need_a_ppm() -> None:
    ppm = scripted_ppm({"sample 0": 0.5, "sample 1": 0.5, "sample 2": 0.5, "sample 3": 0.5})
    (r,) = MODES["bon"]([P1], ctx_for(one_step_policy(), ppm), 4)
    assert r.prediction == "3" and not r.correct
    with pytest.raises(EvalError, match="PPM"):
        MODES["bon"]([P1], ctx_for(one_step_policy()), 4)


def test_cot_format_extracts_the_answer_from_free_text() -> None:
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        assert prompt.startswith("Question: What is two plus three?\nAnswer: Let's think step by step")
        return [("Two plus three is five, so the answer is $\\boxed{5}$.", None)]

    policy = SeedPolicy(fn)
    (r,) = MODES["greedy"]([P1], ctx_for(policy, format="cot"), 1)
    assert (r.prediction, r.correct) == ("5", True)


def test_beam_search_keeps_the_best_beams_and_returns_the_best_finished() -> None:
    # depth 0: three candidates; "c" fails to execute and is dropped; b (0.7) ranks above a (0.5).
    # depth 1: each beam finishes (all its candidates are the same text, merged); a's answer scores 0.9, b's 0.3.
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        assert seed is not None and n == 3
        if "# a\n" in prompt:
            return [("# a-final\nprint(v)", END_OF_CODE)] * 3
        if "# b\n" in prompt:
            return [("# b-final\nprint(v)", END_OF_CODE)] * 3
        return [("# a\nv = 5", END_OF_STEP), ("# b\nv = 6", END_OF_STEP), ("# c\nv = 1 / 0", END_OF_STEP)]

    ppm = scripted_ppm({"a": 0.5, "b": 0.7, "a-final": 0.9, "b-final": 0.3})
    policy = SeedPolicy(fn)
    (r,) = MODES["beam"]([P1], ctx_for(policy, ppm, beam_candidates=3), 2)
    assert (r.prediction, r.correct, r.score) == ("5", True, 0.9)
    assert r.answers == ("5", "6") and r.scores == (0.9, 0.3)
    assert (r.n_samples, r.n_correct) == (2, 1)
    assert r.tokens == (3 + 2 * 3) * 7  # every candidate counts, dropped and merged ones included
    assert r.extra["dropped"] == 1 + 2 * 2
    assert policy.calls == 2


def test_beam_width_one_follows_the_top_beam_only() -> None:
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        if "# a\n" in prompt:
            return [("# a-final\nprint(v)", END_OF_CODE)] * n
        if "# b\n" in prompt:
            return [("# b-final\nprint(v)", END_OF_CODE)] * n
        return [("# a\nv = 5", END_OF_STEP), ("# b\nv = 6", END_OF_STEP)]

    ppm = scripted_ppm({"a": 0.5, "b": 0.7, "a-final": 0.9, "b-final": 0.3})
    (r,) = MODES["beam"]([P1], ctx_for(SeedPolicy(fn), ppm, beam_candidates=2), 1)
    assert r.prediction == "6" and r.answers == ("6",) and not r.correct


def _outcome(answers: Sequence[str | None], scores: Sequence[float | None]) -> mcts_mode.TreeOutcome:
    return mcts_mode.TreeOutcome(tuple(answers), tuple(scores), tokens=40, wall_time_s=0.5, rollouts=4, nodes=9)


def test_mcts_answer_rules_on_a_known_tree() -> None:
    ctx = ctx_for(one_step_policy(), scripted_ppm({}), top_k=3)
    # Terminals in creation order; the paper's rule takes the best score, the reference's votes over the top 3.
    ctx.cache[("mcts", 4, ("p1",))] = [_outcome(["1", "2", "5", "5", "7"], [0.95, 0.2, 0.8, 0.7, -0.3])]
    (best,) = MODES["mcts"]([P1], ctx, 4)
    (topk,) = MODES["mcts-topk"]([P1], ctx, 4)
    (weighted,) = MODES["mcts-wmaj"]([P1], ctx, 4)
    assert (best.prediction, best.correct, best.score) == ("1", False, 0.95)
    assert (topk.prediction, topk.correct, topk.votes, topk.score) == ("5", True, 2, 0.8)
    # weights (1 + s) / 2: "1" 0.975, "2" 0.6, "5" 0.9 + 0.85 = 1.75, "7" 0.35
    assert (weighted.prediction, weighted.correct, weighted.votes, weighted.score) == ("5", True, 2, 0.8)
    for r in (best, topk, weighted):
        assert (r.n_samples, r.n_correct, r.tokens, r.wall_time_s) == (5, 2, 40, 0.5)
    assert ctx.policy.calls == 0  # type: ignore[attr-defined]


def test_mcts_topk_tie_goes_to_the_higher_ranked_answer() -> None:
    ctx = ctx_for(one_step_policy(), scripted_ppm({}), top_k=4)
    ctx.cache[("mcts", 2, ("p1",))] = [_outcome(["3", "5", "5", "3", None], [0.1, 0.6, 0.2, 0.9, 0.99])]
    (topk,) = MODES["mcts-topk"]([P1], ctx, 2)
    assert topk.prediction == "3"  # 3 and 5 have two votes each; 3 holds the top-ranked answer (0.9)


def test_mcts_runs_the_search_engine_once_for_both_rules() -> None:
    """The real MCTS engine in eval mode: four distinct first steps, each finished by a final code step."""
    first = [("# s0\nv = 1", END_OF_STEP), ("# s1\nv = 2", END_OF_STEP), ("# s2\nv = 1 + 1", END_OF_STEP)]
    first.append(("# s3\nv = 3", END_OF_STEP))

    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        if END_OF_STEP not in prompt:
            return [first[i % 4] for i in range(n)]
        return [("# fin\nprint(v)", END_OF_CODE)] * n

    # The final step's score is decided by which first step the trajectory took.
    def score(prefix: str) -> float:
        table = {"# s0\n": 0.9, "# s1\n": 0.5, "# s2\n": 0.4, "# s3\n": 0.1}
        base = next(v for k, v in table.items() if k in prefix)
        return base if "print(v)" in prefix else 0.0

    P = Problem("p9", "What is one plus one?", "2", source="toy")
    policy = SeedPolicy(fn)
    ctx = ctx_for(policy, FunctionRewardModel(score), top_k=3, mcts_candidates=4)
    (best,) = MODES["mcts"]([P], ctx, 4)
    calls = policy.calls
    (topk,) = MODES["mcts-topk"]([P], ctx, 4)
    assert policy.calls == calls  # the second rule reuses the search
    assert sorted(a or "" for a in best.answers) == ["1", "2", "2", "3"]
    assert (best.prediction, best.correct, best.score) == ("1", False, 0.9)
    assert (topk.prediction, topk.correct, topk.votes) == ("2", True, 2)
    assert (best.n_samples, best.n_correct) == (4, 2)
    assert best.tokens == topk.tokens > 0


def test_mcts_plain_votes_over_every_answer_and_never_consults_the_ppm() -> None:
    ctx = ctx_for(one_step_policy(), scripted_ppm({}))
    # The plain search has its own cache slot: a PPM-guided tree of the same budget is not reused for it.
    ctx.cache[("mcts", 4, ("p1",))] = [_outcome(["1", "1", "1"], [0.9, 0.9, 0.9])]
    ctx.cache[("mcts-plain", 4, ("p1",))] = [_outcome(["5", "1", "5", "7"], [None, None, None, None])]
    (plain,) = MODES["mcts-plain"]([P1], ctx, 4)
    assert (plain.prediction, plain.correct, plain.votes) == ("5", True, 2)
    assert (plain.n_samples, plain.n_correct) == (4, 2)


def test_mcts_plain_search_scores_nothing_with_the_ppm() -> None:
    """The real engine without a PPM: every new node starts at Q 0 and the PPM given to the context is never asked."""
    first = [("# s0\nv = 1", END_OF_STEP), ("# s1\nv = 2", END_OF_STEP), ("# s2\nv = 1 + 1", END_OF_STEP)]

    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        if END_OF_STEP not in prompt:
            return [first[i % 3] for i in range(n)]
        return [("# fin\nprint(v)", END_OF_CODE)] * n

    asked: list[str] = []

    def score(prefix: str) -> float:
        asked.append(prefix)
        return 1.0

    P = Problem("p9", "What is one plus one?", "2", source="toy")
    ctx = ctx_for(SeedPolicy(fn), FunctionRewardModel(score), mcts_candidates=3)
    (plain,) = MODES["mcts-plain"]([P], ctx, 3)
    assert not asked
    assert sorted(a or "" for a in plain.answers) == ["1", "2", "2"]
    assert (plain.prediction, plain.correct, plain.votes) == ("2", True, 2)
    # no PPM judged these answers: the search records no scores, so the reports show no "PPM rank" for the baseline
    assert plain.scores == (None, None, None) and plain.score is None
    assert summarize([plain])[0].ranking_accuracy is None


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert not tokenize and add_generation_prompt
        return f"<|im_start|>user\n{messages[0]['content']}<|im_end|>\n<|im_start|>assistant\n"


def test_cot_uses_the_chat_template_when_the_backend_has_one() -> None:
    seen: list[str] = []

    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        seen.append(prompt)
        return [("So it is \\boxed{5}.", None)]

    policy = SeedPolicy(fn)
    policy.tokenizer = ChatTokenizer()  # type: ignore[attr-defined]
    (r,) = MODES["greedy"]([P1], ctx_for(policy, format="cot"), 1)
    assert r.correct
    assert seen[0].startswith("<|im_start|>user\nWhat is two plus three?\n\nPlease reason step by step")
    assert seen[0].endswith("<|im_start|>assistant\n")
    (r,) = MODES["greedy"]([P1], ctx_for(policy, format="cot", use_chat_template=False), 1)
    assert seen[1].startswith("Question: What is two plus three?")


def test_cot_beam_search_steps_by_paragraph() -> None:
    def fn(prompt: str, seed: int | None, n: int) -> list[Reply]:
        if "First" not in prompt and "Other" not in prompt:
            first: list[Reply] = [("First, add.", "\n\n"), ("Other idea.", "\n\n")]
            return first[:n]
        if "First" in prompt:
            return [("So \\boxed{5}.", None)] * n
        return [("So \\boxed{6}.", None)] * n

    ppm = FunctionRewardModel(lambda prefix: 0.8 if "boxed{5}" in prefix else 0.6 if "Other" in prefix else 0.1)
    (r,) = MODES["beam"]([P1], ctx_for(SeedPolicy(fn), ppm, format="cot", beam_candidates=2), 2)
    assert (r.prediction, r.correct, r.answers, r.scores) == ("5", True, ("5", "6"), (0.8, 0.6))

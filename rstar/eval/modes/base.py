"""What every inference mode gets (`EvalContext`) and the helpers they share (sampling k trajectories, grading).

A mode is a function `run(problems, ctx, budget) -> list[ProblemResult]`, one result per problem in order. It may
raise (an unreachable model server, a broken backend): the runner records the error for the batch and goes on.
Modes leave `wall_time_s` at 0 and the runner fills in each problem's share of the batch's wall time, unless the mode
measured it itself (MCTS reuses one search for both of its answer rules and reports the search's own time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rstar.eval.config import EvalConfig
from rstar.eval.engine import EvalError, rollout
from rstar.eval.metrics import ProblemResult
from rstar.eval.prompts import Trajectory, TrajectoryFormat, make_format
from rstar.seeds import stable_seed
from rstar.types import CodeExecutor, PolicyLM, Problem, RewardModel


@dataclass
class EvalContext:
    """The models, executor and settings a mode runs with; `cache` lets modes share work within one run."""

    policy: PolicyLM
    config: EvalConfig = field(default_factory=EvalConfig)
    executor: CodeExecutor | None = None
    reward_model: RewardModel | None = None
    cache: dict[Any, Any] = field(default_factory=dict)
    _formats: dict[bool, TrajectoryFormat] = field(default_factory=dict, repr=False)

    def fmt(self, *, stepwise: bool = False) -> TrajectoryFormat:
        """The prompt format of this run; `stepwise` for step-level search (beam)."""
        if stepwise not in self._formats:
            c = self.config
            self._formats[stepwise] = make_format(
                c.format,
                policy=self.policy,
                stepwise=stepwise,
                max_step_tokens=c.max_step_tokens,
                max_tokens=c.max_tokens,
                execute_intermediate=c.execute_intermediate,
                use_chat_template=c.use_chat_template,
            )
        return self._formats[stepwise]

    def require_ppm(self, mode: str) -> RewardModel:
        if self.reward_model is None:
            raise EvalError(f"mode {mode} ranks trajectories with a PPM: pass a reward model (--ppm SPEC)")
        return self.reward_model

    @property
    def ppm_id(self) -> str | None:
        return None if self.reward_model is None else self.reward_model.model_id


def sample_trajectories(problems: Sequence[Problem], ctx: EvalContext, k: int) -> list[list[Trajectory]]:
    """k independently sampled full trajectories per problem (sample j of problem p seeded by (seed, p.id, j, depth))."""
    fmt = ctx.fmt()
    c = ctx.config
    slots = [(p, j) for p in problems for j in range(k)]
    trajs = [Trajectory(fmt.prompt(p.question)) for p, _ in slots]

    def seed_of(i: int, depth: int) -> int:
        p, j = slots[i]
        return stable_seed(c.seed, p.id, j, depth)

    done = rollout(
        trajs,
        ctx.policy,
        fmt,
        ctx.executor,
        temperature=c.temperature,
        top_p=c.top_p,
        max_steps=c.max_steps,
        seed_of=seed_of,
    )
    return [done[i * k : (i + 1) * k] for i in range(len(problems))]


class Grades:
    """Grades a problem's sample answers against its gold with the project's one grader, each distinct string once."""

    def __init__(self, gold: str) -> None:
        self.gold = gold
        self._seen: dict[str, Any] = {}

    def grade(self, answer: str | None) -> Any:
        """The `GradeResult` of `answer`, or None for no answer."""
        if answer is None:
            return None
        if answer not in self._seen:
            from rstar.verify.answer import grade

            self._seen[answer] = grade(self.gold, answer)
        return self._seen[answer]

    def correct(self, answer: str | None) -> bool:
        g = self.grade(answer)
        return bool(g is not None and g.correct)


def make_result(
    problem: Problem,
    mode: str,
    budget: int,
    *,
    prediction: str | None,
    answers: Sequence[str | None],
    scores: Sequence[float | None] | None = None,
    tokens: int,
    grades: Grades | None = None,
    score: float | None = None,
    votes: int | None = None,
    n_samples: int | None = None,
    extra: dict[str, Any] | None = None,
) -> ProblemResult:
    """A `ProblemResult` with the prediction and every sample graded (n_samples defaults to len(answers))."""
    g = grades or Grades(problem.answer)
    pred_grade = g.grade(prediction)
    return ProblemResult(
        benchmark=problem.source,
        mode=mode,
        budget=budget,
        problem_id=problem.id,
        problem=problem.question,
        gold=problem.answer,
        prediction=prediction,
        correct=bool(pred_grade is not None and pred_grade.correct),
        n_samples=len(answers) if n_samples is None else n_samples,
        n_correct=sum(g.correct(a) for a in answers),
        sample_correct=tuple(g.correct(a) for a in answers),
        tokens=tokens,
        level=problem.level,
        subject=problem.subject,
        score=score,
        votes=votes,
        answers=tuple(answers),
        scores=tuple(scores) if scores is not None else (),
        grade_method=None if pred_grade is None else getattr(pred_grade, "method", None),
        extra=extra or {},
    )

"""The batched multi-tree driver: many problems' searches advance together, one model call per tick, no lock-step.

    result = synthesize(problems, policy, executor, SearchConfig(rollouts=16), reward_model=ppm)
    result.nodes      # polars frame, NODES_SCHEMA (one row per node of every tree)
    result.problems   # polars frame, PROBLEMS_SCHEMA (one row per problem)
    result.stats      # SearchStats: counts and where the time went

How a tick works (continuous batching):

1. Up to `config.max_active_trees` trees are in flight. Each names the one node it wants expanded next
   (`TreeSearch.next_request`): the next step of its current rollout, or the first of its next rollout. A tree with
   nothing left to do is retired at once, its result handed to `on_problem_done`, and its slot refilled from the
   problem queue in the same tick.
2. ONE `policy.generate` call carries every active tree's prompt, each with its own seed derived from
   (config.seed, problem id, node id), so a tree's samples do not depend on its batch-mates.
3. ONE `executor.run_batch` call runs every candidate's accumulated program, across trees.
4. ONE `reward_model.score` call scores every new node that needs a PPM value (modes "ppm" and "eval").
5. Each tree applies its results on its own: grades, backs up, and continues its rollout or ends it.

A tree never waits for the slowest tree of its batch to finish a rollout; the batch is whatever is pending now.

Failures: if a batched call raises, it is retried once per tree, and only the trees whose own call still fails
are stopped. A stopped tree keeps its nodes and reports the error in its problem row's `error` column; the shard
goes on. When `config.abort_after_errors` problems in a row fail, the model server or sandbox is taken to be down and
`SearchAborted` is raised (results already handed to `on_problem_done` stay saved; in-flight trees are lost).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import polars as pl

from rstar.config import SearchConfig
from rstar.data.schema import NODES_SCHEMA, PROBLEMS_SCHEMA
from rstar.search.mcts import (
    ExpansionRequest,
    Grader,
    TreeCounters,
    TreeSearch,
    default_grader,
    rollouts_for_problem,
)
from rstar.search.tree import Tree
from rstar.types import CodeExecutor, Completion, ExecutionResult, PolicyLM, Problem, RewardModel, SamplingSpec
from rstar.verify.steps import STOP_STRINGS

T = TypeVar("T")
R = TypeVar("R")


class SearchAborted(RuntimeError):
    """Too many problems in a row failed: the model server, reward model or sandbox is probably down."""


@dataclass
class SearchStats:
    """Counters and timings of one driver run. `bookkeeping_s` is everything outside the injected callables."""

    problems: int = 0  # finished (failed ones included)
    failed: int = 0
    solved: int = 0
    rollouts: int = 0  # completed rollouts, in-flight trees included
    nodes: int = 0
    ticks: int = 0
    policy_calls: int = 0
    prompts: int = 0
    tokens: int = 0
    counters: TreeCounters = field(default_factory=TreeCounters)
    total_s: float = 0.0
    model_s: float = 0.0
    exec_s: float = 0.0
    ppm_s: float = 0.0
    grade_s: float = 0.0

    @property
    def expansions(self) -> int:
        return self.counters.expansions

    @property
    def bookkeeping_s(self) -> float:
        return max(0.0, self.total_s - self.model_s - self.exec_s - self.ppm_s - self.grade_s)

    @property
    def bookkeeping_ms_per_expansion(self) -> float:
        return 1000.0 * self.bookkeeping_s / max(1, self.prompts)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "counters"}
        d.update(dataclasses.asdict(self.counters))
        d["bookkeeping_s"] = round(self.bookkeeping_s, 4)
        d["bookkeeping_ms_per_expansion"] = round(self.bookkeeping_ms_per_expansion, 4)
        for k in ("total_s", "model_s", "exec_s", "ppm_s", "grade_s"):
            d[k] = round(d[k], 4)
        return d


@dataclass
class ProblemResult:
    """One finished problem: its tree, its rows for both tables, and its error (None when the search completed)."""

    problem: Problem
    tree: Tree
    problem_row: dict[str, Any]
    node_rows: list[dict[str, Any]]

    @property
    def error(self) -> str | None:
        err: str | None = self.problem_row["error"]
        return err

    @property
    def solved(self) -> bool:
        return bool(self.problem_row["solved"])


@dataclass
class SynthesisResult:
    """Everything `synthesize` produced, as frames under the stage-boundary schemas."""

    nodes: pl.DataFrame
    problems: pl.DataFrame
    stats: SearchStats
    results: list[ProblemResult] = field(default_factory=list)


@dataclass
class _Active:
    ts: TreeSearch
    t0: float
    req: ExpansionRequest | None = None
    programs: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)


def sampling_spec(config: SearchConfig) -> SamplingSpec:
    """The policy sampling parameters of an expansion under `config`."""
    return SamplingSpec(
        n=config.candidates,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_step_tokens,
        stop=STOP_STRINGS,
        seed=config.seed,
    )


def run_search(
    problems: Iterable[Problem],
    policy: PolicyLM,
    executor: CodeExecutor,
    config: SearchConfig,
    *,
    reward_model: RewardModel | None = None,
    grader: Grader | None = None,
    rollouts_for: Mapping[str, int] | None = None,
    round_idx: int = 0,
    on_problem_done: Callable[[ProblemResult], None] | None = None,
    on_tick: Callable[[SearchStats], None] | None = None,
) -> SearchStats:
    """Search every problem; hand each finished one to `on_problem_done` as soon as it is done. Returns the stats.

    `rollouts_for` overrides the rollout budget per problem id (the round flow gives last round's hard problems
    more). `round_idx` is stamped on every row (1-based like the paper's rounds; 0 outside a round).
    """
    if config.uses_ppm and reward_model is None:
        raise ValueError(f"mode {config.mode!r} needs a reward model (PPM); pass reward_model= or use mode 'terminal'")
    stats = SearchStats()
    base_grader = grader if grader is not None else default_grader()

    def timed_grader(gold: str, pred: str) -> bool:
        t = time.perf_counter()
        try:
            return base_grader(gold, pred)
        finally:
            stats.grade_s += time.perf_counter() - t

    spec = sampling_spec(config)
    policy_id = str(policy.model_id)
    ppm_id = str(reward_model.model_id) if reward_model is not None and config.uses_ppm else None
    queue = iter(problems)
    input_left = True
    active: list[_Active] = []
    consecutive_failures = 0
    retired_rollouts = 0
    t_start = time.perf_counter()

    def admit() -> None:
        nonlocal input_left
        while input_left and len(active) < config.max_active_trees:
            problem = next(queue, None)
            if problem is None:
                input_left = False
                return
            try:
                if config.needs_gold and not problem.answer:
                    raise ValueError(f"no gold answer: mode {config.mode!r} grades terminals; use mode 'eval'")
                budget = rollouts_for_problem(problem, config, rollouts_for)
                ts = TreeSearch(problem, config, grader=timed_grader, rollouts=budget)
            except Exception as exc:
                ts = TreeSearch(problem, config, grader=timed_grader, rollouts=1)
                ts.fail(exc)
            active.append(_Active(ts, time.perf_counter()))

    def retire(a: _Active) -> None:
        nonlocal consecutive_failures, retired_rollouts
        ts = a.ts
        retired_rollouts += ts.rollouts_done
        row = ts.problem_row(
            wall_time_s=time.perf_counter() - a.t0, round_idx=round_idx, policy_id=policy_id, ppm_id=ppm_id
        )
        result = ProblemResult(
            problem=ts.problem,
            tree=ts.tree,
            problem_row=row,
            node_rows=ts.tree.to_rows(round_idx=round_idx, policy_id=policy_id, ppm_id=ppm_id),
        )
        stats.problems += 1
        stats.nodes += len(ts.tree)
        stats.tokens += ts.tree.tokens_generated
        stats.counters.add(ts.counters)
        stats.solved += int(result.solved)
        if ts.error is not None:
            stats.failed += 1
            consecutive_failures += 1
        else:
            consecutive_failures = 0
        if on_problem_done is not None:
            on_problem_done(result)
        if config.abort_after_errors and consecutive_failures >= config.abort_after_errors:
            raise SearchAborted(
                f"{consecutive_failures} problems in a row failed; last error: {ts.error}. "
                "Finished problems are saved; fix the cause and re-run to resume."
            )

    def gather() -> None:
        """Give every active tree a pending request, retiring finished trees and refilling their slots at once."""
        nonlocal active
        while True:
            admit()
            retired = False
            keep: list[_Active] = []
            for a in active:
                if a.req is None and not a.ts.done:
                    try:
                        a.req = a.ts.next_request()
                    except Exception as exc:
                        a.ts.fail(exc)
                if a.req is None:
                    retire(a)
                    retired = True
                else:
                    keep.append(a)
            active = keep
            if not retired or not input_left:
                return

    try:
        while True:
            gather()
            if not active:
                break
            stats.ticks += 1
            # 1. one policy call for every pending expansion
            t = time.perf_counter()
            outs = _isolated(
                active,
                lambda a: [a.req] if a.req is not None else [],
                lambda reqs: _generate(policy, reqs, spec),
            )
            stats.model_s += time.perf_counter() - t
            stats.policy_calls += 1
            stats.prompts += len(active)
            for a in active:
                if a.ts.done:
                    continue
                try:
                    a.programs = a.ts.take_completions(outs[id(a)][0])
                except Exception as exc:
                    a.ts.fail(exc)
            # 2. one executor call for every candidate's program
            live = [a for a in active if not a.ts.done]
            t = time.perf_counter()
            results = _isolated(live, lambda a: a.programs, lambda codes: _run(executor, codes))
            stats.exec_s += time.perf_counter() - t
            for a in live:
                if a.ts.done:
                    continue
                try:
                    a.prefixes = a.ts.take_results(results[id(a)])
                except Exception as exc:
                    a.ts.fail(exc)
            # 3. one reward-model call for every new node that needs a PPM value
            live = [a for a in active if not a.ts.done]
            t = time.perf_counter()
            if reward_model is not None and any(a.prefixes for a in live):
                scores = _isolated(live, lambda a: a.prefixes, lambda ps: _score(reward_model, ps))
            else:
                scores = {id(a): [] for a in live}
            stats.ppm_s += time.perf_counter() - t
            # 4. every tree evaluates, backs up and moves on by itself
            for a in live:
                if a.ts.done:
                    continue
                try:
                    a.ts.take_scores(scores[id(a)])
                except Exception as exc:
                    a.ts.fail(exc)
            for a in active:
                a.req, a.programs, a.prefixes = None, [], []
            stats.rollouts = retired_rollouts + sum(a.ts.rollouts_done for a in active)
            stats.total_s = time.perf_counter() - t_start
            if on_tick is not None:
                on_tick(stats)
    finally:
        stats.total_s = time.perf_counter() - t_start
        stats.rollouts = retired_rollouts + sum(a.ts.rollouts_done for a in active)
    return stats


def _generate(policy: PolicyLM, reqs: Sequence[ExpansionRequest], spec: SamplingSpec) -> list[list[Completion]]:
    outs = policy.generate([r.prompt for r in reqs], spec, seeds=[r.seed for r in reqs])
    if len(outs) != len(reqs):
        raise RuntimeError(f"policy returned {len(outs)} completion lists for {len(reqs)} prompts")
    return [list(o) for o in outs]


def _run(executor: CodeExecutor, codes: Sequence[str]) -> list[ExecutionResult]:
    results = executor.run_batch(codes)
    if len(results) != len(codes):
        raise RuntimeError(f"executor returned {len(results)} results for {len(codes)} programs")
    return list(results)


def _score(reward_model: RewardModel, prefixes: Sequence[str]) -> list[float]:
    scores = reward_model.score(prefixes)
    if len(scores) != len(prefixes):
        raise RuntimeError(f"reward model returned {len(scores)} scores for {len(prefixes)} prefixes")
    return list(scores)


def _isolated(
    trees: Sequence[_Active],
    items_of: Callable[[_Active], Sequence[T]],
    call: Callable[[Sequence[T]], list[R]],
) -> dict[int, list[R]]:
    """Run `call` once on every live tree's items together; {id(tree): its results}.

    If the batched call raises, each tree's items are retried alone and a tree whose own call fails is stopped with
    that error, so one poisoned prompt (or one failing program) cannot take its batch-mates down with it.
    """
    groups = [(a, list(items_of(a))) for a in trees if not a.ts.done]
    out: dict[int, list[R]] = {id(a): [] for a, _ in groups}
    flat = [x for _, xs in groups for x in xs]
    if not flat:
        return out
    try:
        res = call(flat)
    except Exception as exc:
        if len([g for g in groups if g[1]]) == 1:
            for a, xs in groups:
                if xs:
                    a.ts.fail(exc)
            return out
        for a, xs in groups:
            if not xs:
                continue
            try:
                out[id(a)] = call(xs)
            except Exception as inner:
                a.ts.fail(inner)
        return out
    k = 0
    for a, xs in groups:
        out[id(a)] = res[k : k + len(xs)]
        k += len(xs)
    return out


def frames(results: Sequence[ProblemResult]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(nodes, problems) frames of finished problems, under NODES_SCHEMA and PROBLEMS_SCHEMA."""
    node_rows = [r for res in results for r in res.node_rows]
    nodes = (
        pl.DataFrame(node_rows, schema=NODES_SCHEMA, orient="row") if node_rows else pl.DataFrame(schema=NODES_SCHEMA)
    )
    problem_rows = [res.problem_row for res in results]
    probs = (
        pl.DataFrame(problem_rows, schema=PROBLEMS_SCHEMA, orient="row")
        if problem_rows
        else pl.DataFrame(schema=PROBLEMS_SCHEMA)
    )
    return nodes, probs


def synthesize(
    problems: Iterable[Problem],
    policy: PolicyLM,
    executor: CodeExecutor,
    config: SearchConfig,
    *,
    reward_model: RewardModel | None = None,
    grader: Grader | None = None,
    rollouts_for: Mapping[str, int] | None = None,
    round_idx: int = 0,
    on_problem_done: Callable[[ProblemResult], None] | None = None,
    on_tick: Callable[[SearchStats], None] | None = None,
    collect: bool = True,
) -> SynthesisResult:
    """Run MCTS on every problem and return the nodes and problems tables (see `run_search` for the arguments).

    With `collect=False` nothing is kept in memory (the frames come back empty): stream results through
    `on_problem_done` instead, as `rstar.search.io.synthesize_to_dir` does.
    """
    kept: list[ProblemResult] = []

    def done(res: ProblemResult) -> None:
        if collect:
            kept.append(res)
        if on_problem_done is not None:
            on_problem_done(res)

    stats = run_search(
        problems,
        policy,
        executor,
        config,
        reward_model=reward_model,
        grader=grader,
        rollouts_for=rollouts_for,
        round_idx=round_idx,
        on_problem_done=done,
        on_tick=on_tick,
    )
    nodes, probs = frames(kept)
    return SynthesisResult(nodes=nodes, problems=probs, stats=stats, results=kept)

"""`evaluate(...)`: run inference modes over benchmarks at several budgets and write the reports; the one entry point
behind `rstar eval`, `bench/eval_scaling.py` and the Prefect `evaluate` flow.

    report = evaluate("hf:/ckpt/policy-r3", ["math500", "gsm8k"], modes=["greedy", "mcts"], budgets=[1, 4, 16],
                      out_dir="runs/eval-r3", reward_model="hf:/ckpt/ppm-r3", data_dir="data/benchmarks")
    print(report.table())

The run is a grid of cells (benchmark x mode x budget; greedy runs once, at budget 1). Each cell runs its problems in
batches of `config.batch_size`. Failure is contained:

- a benchmark that cannot be loaded (unknown name, missing file, hub unreachable) is reported and skipped;
- rows without an answer are reported by the loader and skipped;
- a batch whose mode raises (an unreachable model server, a crashed backend) is recorded with the error on each of
  its problems (they count as wrong) and the cell goes on; after `config.max_failed_batches` failed batches in a row
  the cell's remaining problems are recorded as skipped, so a dead server costs seconds, not hours;
- a mode that cannot run as configured (bon/beam/mcts without a PPM, mcts with --format cot) fails its cell at once.

Results are appended to `out_dir/results.jsonl` after every batch and the reports are rewritten after every cell, so
an interrupted run keeps everything it finished.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rstar.data.problems import LoadReport
from rstar.eval.benchmarks import BenchmarkSpec, load_benchmarks
from rstar.eval.config import EvalConfig
from rstar.eval.engine import EvalError
from rstar.eval.metrics import CellSummary, ProblemResult, mode_label, summarize
from rstar.eval.modes import BUDGETLESS_MODES, MODES, PPM_MODES, EvalContext, resolve_mode
from rstar.types import CodeExecutor, PolicyLM, Problem, RewardModel


@dataclass
class EvalReport:
    """What a run produced: every per-problem result, the per-cell summaries, errors and the files written."""

    out_dir: Path
    results: list[ProblemResult]
    summaries: list[CellSummary]
    load_reports: dict[str, LoadReport] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    policy_id: str = ""
    ppm_id: str | None = None
    config: EvalConfig = field(default_factory=EvalConfig)

    def table(self) -> str:
        from rstar.eval.report import format_table, pivot_table

        return pivot_table(self.summaries) + "\n\n" + format_table(self.summaries)

    def accuracy(self, benchmark: str, mode: str, budget: int = 1) -> float:
        """Accuracy of one cell (KeyError when the run has no such cell)."""
        for s in self.summaries:
            if (s.benchmark, s.mode, s.budget) == (benchmark, mode, 1 if mode in BUDGETLESS_MODES else budget):
                return s.accuracy
        raise KeyError(f"no cell {benchmark} {mode_label(mode, budget)} in this report")

    @property
    def ok(self) -> bool:
        """True when every benchmark loaded and every problem was evaluated without an error."""
        return not self.errors and all(r.error is None for r in self.results)


def _cells(modes: Sequence[str], budgets: Sequence[int]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for m in modes:
        for b in [1] if m in BUDGETLESS_MODES else budgets:
            if (m, b) not in out:
                out.append((m, b))
    return out


def _error_result(problem: Problem, mode: str, budget: int, error: str) -> ProblemResult:
    return ProblemResult(
        benchmark=problem.source,
        mode=mode,
        budget=budget,
        problem_id=problem.id,
        problem=problem.question,
        gold=problem.answer,
        prediction=None,
        correct=False,
        level=problem.level,
        subject=problem.subject,
        error=error,
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


def run_cell(
    problems: Sequence[Problem],
    mode: str,
    budget: int,
    ctx: EvalContext,
    *,
    on_batch: Callable[[list[ProblemResult]], None] | None = None,
) -> list[ProblemResult]:
    """Run one (mode, budget) over `problems` in batches, containing failures as described in the module docstring."""
    fn = MODES[mode]
    c = ctx.config
    out: list[ProblemResult] = []
    failed_in_row = 0
    fatal: str | None = None
    for start in range(0, len(problems), c.batch_size):
        batch = list(problems[start : start + c.batch_size])
        if fatal is not None:
            results = [_error_result(p, mode, budget, fatal) for p in batch]
        else:
            t0 = time.perf_counter()
            try:
                results = fn(batch, ctx, budget)
                if len(results) != len(batch):
                    raise EvalError(f"mode {mode} returned {len(results)} results for {len(batch)} problems")
                failed_in_row = 0
            except EvalError as exc:  # misconfiguration: every batch would fail the same way
                fatal = _describe(exc)
                results = [_error_result(p, mode, budget, fatal) for p in batch]
            except Exception as exc:
                failed_in_row += 1
                err = _describe(exc)
                results = [_error_result(p, mode, budget, err) for p in batch]
                if failed_in_row >= c.max_failed_batches:
                    fatal = f"skipped after {failed_in_row} failed batches in a row (last: {err})"
            share = (time.perf_counter() - t0) / max(1, len(batch))
            results = [r if r.wall_time_s > 0 else dataclasses.replace(r, wall_time_s=share) for r in results]
        out.extend(results)
        if on_batch is not None:
            on_batch(results)
    return out


def _default_executor() -> Any:
    from rstar.verify.sandbox import Sandbox, SandboxConfig

    return Sandbox(SandboxConfig())


def evaluate(
    policy: str | PolicyLM,
    benchmarks: Sequence[str | BenchmarkSpec] | Mapping[str, Sequence[Problem]],
    modes: Sequence[str] = ("greedy",),
    budgets: Sequence[int] = (1,),
    out_dir: str | Path = "eval-out",
    *,
    reward_model: str | RewardModel | None = None,
    executor: CodeExecutor | None = None,
    config: EvalConfig | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = False,
    plot: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> EvalReport:
    """Evaluate a policy (spec string or `PolicyLM`) on benchmarks (names / specs, or name -> problems) and write reports.

    `modes` are names from `rstar.eval.modes.MODES` (aliases accepted); `budgets` apply to every mode but greedy.
    A code-format run without an `executor` gets a default `rstar.verify.sandbox.Sandbox`, closed at the end.
    Raises ValueError for an unknown mode or a budget < 1 (nothing would run); everything else is contained and
    reported (see the module docstring).
    """
    cfg = config or EvalConfig()
    mode_names = [resolve_mode(m) for m in modes]
    if not mode_names:
        raise ValueError("evaluate needs at least one mode")
    budget_list = sorted({int(b) for b in budgets}) or [1]
    if budget_list[0] < 1:
        raise ValueError(f"budgets must be >= 1, got {list(budgets)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    pol = _load_policy(policy)
    ppm = _load_ppm(reward_model)
    errors: list[str] = []
    load_reports: dict[str, LoadReport] = {}
    if isinstance(benchmarks, Mapping):
        loaded = {
            name: [dataclasses.replace(p, source=name) for p in list(ps)[: len(ps) if limit is None else limit]]
            for name, ps in benchmarks.items()
        }
    else:
        loaded, load_reports, load_errors = load_benchmarks(list(benchmarks), data_dir=data_dir, limit=limit)
        errors += list(load_errors.values())
    for name, rep in load_reports.items():
        errors += [f"{name} {e}" for e in rep.errors[:20]]
        if len(rep.errors) > 20:
            errors.append(f"{name}: {len(rep.errors) - 20} more rows skipped")

    own_executor = None
    if executor is None and (cfg.format == "code" or any(m.startswith("mcts") for m in mode_names)):
        try:
            own_executor = executor = _default_executor()
        except Exception as exc:  # no sandbox: code-format cells will fail with a clear error
            errors.append(f"no code executor: {_describe(exc)}")
    ctx = EvalContext(policy=pol, config=cfg, executor=executor, reward_model=ppm)
    blocked = {m: why for m in mode_names if (why := _blocker(m, ctx)) is not None}
    errors += [f"mode {m} skipped: {why}" for m, why in blocked.items()]
    cells = _cells([m for m in mode_names if m not in blocked], budget_list)
    run_meta: dict[str, Any] = {
        "policy": pol.model_id,
        "ppm": None if ppm is None else ppm.model_id,
        "benchmarks": list(loaded),
        "modes": mode_names,
        "budgets": budget_list,
        "limit": limit,
        "config": cfg.to_dict(),
        "load_reports": {k: dataclasses.asdict(v) for k, v in load_reports.items()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **dict(meta or {}),
    }
    results: list[ProblemResult] = []
    jsonl = out / "results.jsonl"
    total = sum(len(ps) for ps in loaded.values()) * len(cells)
    bar = _progress(total, progress)
    files: dict[str, Path] = {}
    try:
        with jsonl.open("w", encoding="utf-8") as fh:

            def on_batch(batch: list[ProblemResult]) -> None:
                for r in batch:
                    fh.write(json.dumps(r.to_row(), ensure_ascii=False, default=str) + "\n")
                fh.flush()
                bar.update(len(batch))

            for name, problems in loaded.items():
                for mode, budget in cells:
                    bar.set_description(f"{name} {mode_label(mode, budget)}")
                    cell = run_cell(problems, mode, budget, ctx, on_batch=on_batch)
                    results.extend(cell)
                    cell_errors = sorted({r.error for r in cell if r.error is not None})
                    errors += [f"{name} {mode_label(mode, budget)}: {e}" for e in cell_errors[:3]]
                    files = _write(out, results, run_meta, errors, plot=False)
        files = _write(out, results, run_meta, errors, plot=plot)
    finally:
        bar.close()
        if own_executor is not None and hasattr(own_executor, "close"):
            own_executor.close()
    files["results_jsonl"] = jsonl
    return EvalReport(
        out_dir=out,
        results=results,
        summaries=summarize(results),
        load_reports=load_reports,
        errors=errors,
        files=files,
        policy_id=pol.model_id,
        ppm_id=None if ppm is None else ppm.model_id,
        config=cfg,
    )


def _write(
    out: Path, results: list[ProblemResult], meta: dict[str, Any], errors: list[str], *, plot: bool
) -> dict[str, Path]:
    from rstar.eval.report import write_reports

    meta = {**meta, "errors": list(errors), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return write_reports(out, results, meta=meta, plot=plot)


def _blocker(mode: str, ctx: EvalContext) -> str | None:
    """Why `mode` cannot run at all in this context (its cells are then skipped), or None."""
    if mode in PPM_MODES and ctx.reward_model is None:
        return "it ranks trajectories with a PPM and none was given (--ppm SPEC)"
    if mode.startswith("mcts") and ctx.config.format != "code":
        return "the MCTS searches over code-augmented steps: use --format code"
    return None


def _load_policy(policy: str | PolicyLM) -> PolicyLM:
    if isinstance(policy, str):
        from rstar.models.registry import load_policy

        return load_policy(policy)
    return policy


def _load_ppm(reward_model: str | RewardModel | None) -> RewardModel | None:
    if reward_model is None or isinstance(reward_model, str):
        from rstar.models.registry import load_reward_model

        return load_reward_model(reward_model)
    return reward_model


class _NoBar:
    def update(self, n: int) -> None: ...

    def set_description(self, desc: str) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, unit="problem", dynamic_ncols=True)

"""`rstar synthesize`: MCTS over a problem file, streaming node and problem tables to Parquet (resumable).

    rstar synthesize --problems train.jsonl --out out/r1 --policy openai:http://gpu:8000/v1#qwen --rollouts 8
    rstar synthesize --problems train.jsonl --out out/demo --policy fake:oracle --executor inprocess --limit 20
    rstar synthesize --problems test.jsonl --out out/eval --policy hf:ckpt --ppm hf:ppm --mode eval

Writes OUT/nodes/part-*.parquet, OUT/problems/part-*.parquet and OUT/summary.json (docs/data.md). Re-running
with the same OUT skips the problems already done. Malformed problem lines are reported with their line numbers and
skipped. A progress bar on stderr shows problems done / total, rollouts per second and the solve rate so far.
Exit codes: 0 done (per-problem errors are in the tables and the summary), 1 aborted, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from typing import Any

MAX_REPORTED_ERRORS = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthesize",
        help="MCTS over a problem file; writes node and problem tables (Parquet)",
        description=(
            "Run rStar-Math MCTS over every problem and write OUT/nodes/*.parquet, OUT/problems/*.parquet and "
            "OUT/summary.json. Resumes when OUT already holds finished problems. See docs/search.md."
        ),
    )
    p.add_argument(
        "--problems", required=True, help="JSONL / JSON / Parquet problem file, or a Hugging Face dataset id"
    )
    p.add_argument("--out", required=True, help="output directory (resumed when it already holds results)")
    p.add_argument(
        "--policy", required=True, help="policy model spec: hf:PATH, openai:URL#MODEL, smollm2-135m, fake:..."
    )
    p.add_argument("--ppm", default=None, help="process preference model spec (needed by --mode ppm / eval)")
    p.add_argument("--mode", choices=("terminal", "ppm", "eval"), default=None, help="search mode (docs/search.md)")
    p.add_argument(
        "--round",
        type=int,
        default=0,
        help="self-evolution round (1-based): start from the paper's settings for it; 0 = plain defaults",
    )
    p.add_argument("--rollouts", type=int, default=None, help="rollouts per problem (default 16)")
    p.add_argument("--extra-rollouts", type=int, default=None, help="more rollouts for problems left unsolved")
    p.add_argument("--candidates", type=int, default=None, help="candidate steps per expansion (default 8)")
    p.add_argument("--max-depth", type=int, default=None, help="most steps per trajectory (default 16)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 0.7)")
    p.add_argument("--max-step-tokens", type=int, default=None, help="token limit per step (default 512)")
    p.add_argument("--max-active-trees", type=int, default=None, help="trees searched at once (default 64)")
    p.add_argument("--seed", type=int, default=None, help="search seed (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems")
    p.add_argument("--question-field", default=None, help="question field name (default: question/problem/...)")
    p.add_argument("--answer-field", default=None, help="gold answer field name (default: answer/final_answer/...)")
    p.add_argument("--split", default="train", help="split, for a Hugging Face dataset id (default train)")
    p.add_argument("--workers", type=int, default=None, help="sandbox worker processes (default: the sandbox's)")
    p.add_argument(
        "--executor",
        choices=("sandbox", "inprocess"),
        default="sandbox",
        help="where step code runs: the isolated sandbox (default), or in-process exec (UNSAFE: fake policies only)",
    )
    p.add_argument("--no-resume", action="store_true", help="refuse an OUT that already holds results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fail(msg: str) -> int:
    print(f"rstar synthesize: {msg}", file=sys.stderr)
    return 2


def _config(args: argparse.Namespace) -> Any:
    from rstar.config import SearchConfig

    overrides = {
        "mode": args.mode,
        "rollouts": args.rollouts,
        "extra_rollouts_if_unsolved": args.extra_rollouts,
        "candidates": args.candidates,
        "max_depth": args.max_depth,
        "temperature": args.temperature,
        "max_step_tokens": args.max_step_tokens,
        "max_active_trees": args.max_active_trees,
        "seed": args.seed,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.round:
        return SearchConfig.for_round(args.round, **overrides)
    return SearchConfig(**overrides)


def _sandbox(workers: int | None) -> Any:
    """The project's sandbox as a context manager (workers passed on when its config has such a field)."""
    from rstar.verify.sandbox import Sandbox, SandboxConfig

    kwargs: dict[str, Any] = {}
    if workers is not None:
        names = {f.name for f in dataclasses.fields(SandboxConfig)}
        field_name = next((n for n in ("workers", "max_workers", "processes") if n in names), None)
        if field_name is None:
            raise ValueError("this sandbox has no worker setting; drop --workers")
        kwargs[field_name] = workers
    box = Sandbox(SandboxConfig(**kwargs))
    return box if hasattr(box, "__enter__") else contextlib.nullcontext(box)


def run(args: argparse.Namespace) -> int:
    from rstar.data.problems import ProblemFileError, load_problems
    from rstar.models.registry import ModelSpecError, load_policy, load_reward_model
    from rstar.search.driver import ProblemResult, SearchAborted, SearchStats
    from rstar.search.io import finished_problem_ids, synthesize_to_dir

    try:
        config = _config(args)
    except ValueError as exc:
        return _fail(str(exc))
    if config.uses_ppm and not args.ppm:
        return _fail(f"--mode {config.mode} needs a process preference model: pass --ppm SPEC")
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be >= 1")

    try:
        problems, report = load_problems(
            args.problems,
            question_field=args.question_field,
            answer_field=args.answer_field,
            split=args.split,
            require_answer=config.needs_gold,
            limit=args.limit,
        )
    except ProblemFileError as exc:
        return _fail(str(exc))
    print(report.summary(), file=sys.stderr)
    for err in report.errors[:MAX_REPORTED_ERRORS]:
        print(f"  skipped {err}", file=sys.stderr)
    if len(report.errors) > MAX_REPORTED_ERRORS:
        print(f"  ... and {len(report.errors) - MAX_REPORTED_ERRORS} more (all in summary.json)", file=sys.stderr)
    if not problems:
        return _fail(f"no problems to search in {args.problems}")

    try:
        policy = load_policy(args.policy)
        reward_model = load_reward_model(args.ppm)
    except (ModelSpecError, ValueError) as exc:
        return _fail(str(exc))

    done_before = 0 if args.no_resume else len(finished_problem_ids(args.out) & {p.id for p in problems})
    if done_before:
        print(f"resuming: {done_before} of {len(problems)} problems already done in {args.out}", file=sys.stderr)

    if args.executor == "inprocess":
        from rstar.models.fakes import InProcessExecutor

        print("WARNING: --executor inprocess runs model-written code without isolation", file=sys.stderr)
        executor_cm: Any = contextlib.nullcontext(InProcessExecutor())
    else:
        try:
            executor_cm = _sandbox(args.workers)
        except ImportError as exc:
            return _fail(f"the sandbox is not available ({exc}); use --executor inprocess only with fake policies")
        except (TypeError, ValueError, RuntimeError, OSError) as exc:
            return _fail(f"cannot start the sandbox: {type(exc).__name__}: {exc}")

    from tqdm import tqdm

    bar = tqdm(
        total=len(problems) - done_before,
        unit="problem",
        file=sys.stderr,
        disable=True if args.no_progress else None,
        dynamic_ncols=True,
    )
    solved = graded = 0
    t0 = time.perf_counter()
    last = {"rollouts": 0}

    def on_done(res: ProblemResult) -> None:
        nonlocal solved, graded
        graded += int(bool(res.problem.answer))
        solved += int(res.solved)
        bar.update(1)

    def on_tick(stats: SearchStats) -> None:
        if stats.rollouts == last["rollouts"]:
            return
        last["rollouts"] = stats.rollouts
        rate = stats.rollouts / max(1e-9, time.perf_counter() - t0)
        post = {"rollouts/s": f"{rate:.2f}"}
        if graded:
            post["solved"] = f"{solved}/{graded} ({100 * solved / graded:.0f}%)"
        bar.set_postfix(post, refresh=False)

    load_info = {
        "source": report.source,
        "rows": report.rows,
        "kept": report.kept,
        "duplicates": report.duplicates,
        "errors": report.errors,
    }
    try:
        with executor_cm as executor:
            summary = synthesize_to_dir(
                problems,
                args.out,
                policy,
                executor,
                config,
                reward_model=reward_model,
                round_idx=args.round,
                resume=not args.no_resume,
                on_problem_done=on_done,
                on_tick=on_tick,
                extra_summary={"problems_file": str(args.problems), "load_report": load_info},
            )
    except FileExistsError as exc:
        bar.close()
        return _fail(str(exc))
    except SearchAborted as exc:
        bar.close()
        print(f"rstar synthesize: aborted: {exc}", file=sys.stderr)
        return 1
    bar.close()
    totals = summary["totals"]
    run_stats = summary["this_run"]
    rate = "n/a" if totals["solve_rate"] is None else f"{100 * totals['solve_rate']:.1f}%"
    print(
        f"searched {run_stats['problems']} problems ({summary['skipped_already_done']} already done): "
        f"{totals['solved']}/{totals['problems']} solved ({rate}), {totals['failed']} failed, "
        f"{run_stats['rollouts']} rollouts, {run_stats['tokens']} tokens in {run_stats['total_s']:.1f} s -> {args.out}",
        file=sys.stderr,
    )
    for err in totals["errors"][:5]:
        print(f"  failed {err['problem_id']}: {err['error']}", file=sys.stderr)
    return 0

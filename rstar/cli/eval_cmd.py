"""`rstar eval`: evaluate a policy (optionally with a PPM) on math benchmarks under one or more inference modes.

    rstar eval --policy hf:ckpt/policy --ppm hf:ckpt/ppm --benchmarks math500,gsm8k --mode mcts --budget 8
    rstar eval --policy tiny --benchmarks math500 --mode greedy,maj --budgets 1,4,16 --limit 50 --data-dir data/benchmarks
    rstar eval --policy openai:http://gpu:8000/v1#Qwen2.5-Math-7B --format cot --benchmarks aime2024 --mode maj --budget 64

Writes results.parquet, results.jsonl, summary.json, table.md and scaling.png to --out, shows a progress bar on
stderr and prints the accuracy table at the end. Exit status: 0 when everything ran, 1 when some benchmark, cell or
problem had an error (the reports hold what did run), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _budgets(text: str) -> list[int]:
    try:
        values = [int(t) for t in _csv(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"budgets must be integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"budgets must be integers >= 1, got {text!r}")
    return values


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a policy on math benchmarks (greedy, maj@k, best-of-N, beam, MCTS)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", required=True, help="policy model spec (hf:PATH, tiny, smollm2-135m, openai:URL#MODEL)")
    p.add_argument(
        "--ppm",
        default=None,
        help="process preference model spec (needed by bon, wmaj, beam, mcts, mcts-topk, mcts-wmaj)",
    )
    p.add_argument(
        "--benchmarks",
        default="math500",
        help="comma-separated: math500, gsm8k, aime2024, amc23, or NAME=PATH[?question=F&answer=F] (default math500)",
    )
    p.add_argument(
        "--mode",
        "--modes",
        dest="modes",
        default="greedy",
        help="comma-separated modes: greedy, maj, bon, wmaj, beam, mcts, mcts-topk, mcts-wmaj, mcts-plain (default greedy)",
    )
    p.add_argument(
        "--budget", type=int, default=None, help="samples / beam width / rollouts (default 8; greedy ignores it)"
    )
    p.add_argument("--budgets", type=_budgets, default=None, help="several budgets for a scaling curve, e.g. 1,4,16")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory holding local benchmark files (else $RSTAR_BENCHMARK_DIR or the HF hub)",
    )
    p.add_argument("--out", default="eval-out", help="report directory (default ./eval-out)")
    p.add_argument("--format", choices=("code", "cot"), default="code", help="prompt format (default code)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (greedy uses 0)")
    p.add_argument("--max-steps", type=int, default=16, help="most steps per trajectory")
    p.add_argument("--max-step-tokens", type=int, default=256, help="token limit of one step")
    p.add_argument("--max-tokens", type=int, default=1024, help="token limit of a whole CoT answer")
    p.add_argument("--beam-candidates", type=int, default=4, help="beam: candidates per live beam")
    p.add_argument("--mcts-candidates", type=int, default=8, help="mcts: candidates per expansion")
    p.add_argument("--top-k", type=int, default=4, help="mcts-topk: vote over this many top-PPM answers")
    p.add_argument("--batch-size", type=int, default=16, help="problems per batch (results are saved after each)")
    p.add_argument("--seed", type=int, default=0, help="run seed")
    p.add_argument("--no-plot", action="store_true", help="skip scaling.png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rstar.eval.config import EvalConfig
    from rstar.eval.modes import resolve_mode
    from rstar.eval.runner import evaluate
    from rstar.models.registry import load_policy, load_reward_model

    try:
        modes = [resolve_mode(m) for m in _csv(args.modes)]
        if not modes:
            raise ValueError("--mode names no mode")
        budgets = list(args.budgets or []) + ([args.budget] if args.budget is not None else [])
        if any(b < 1 for b in budgets):
            raise ValueError("--budget must be >= 1")
        benchmarks = _csv(args.benchmarks)
        if not benchmarks:
            raise ValueError("--benchmarks names no benchmark")
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be >= 1")
        config = EvalConfig(
            format=args.format,
            temperature=args.temperature,
            max_steps=args.max_steps,
            max_step_tokens=args.max_step_tokens,
            max_tokens=args.max_tokens,
            beam_candidates=args.beam_candidates,
            mcts_candidates=args.mcts_candidates,
            top_k=args.top_k,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"rstar eval: {exc}", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy)
    except Exception as exc:
        print(f"rstar eval: cannot load policy {args.policy!r}: {exc}", file=sys.stderr)
        return 2
    try:
        ppm = load_reward_model(args.ppm)
    except Exception as exc:
        print(f"rstar eval: cannot load PPM {args.ppm!r}: {exc}", file=sys.stderr)
        return 2
    report = evaluate(
        policy,
        benchmarks,
        modes,
        budgets or [8],
        args.out,
        reward_model=ppm,
        config=config,
        data_dir=args.data_dir,
        limit=args.limit,
        progress=not args.quiet,
        plot=not args.no_plot,
    )
    print(report.table())
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    print(f"reports in {report.out_dir}", file=sys.stderr)
    return 0 if report.ok else 1

"""Test-time scaling benchmark: accuracy against budget (and tokens) for a policy + PPM, as JSON, PNG and a table.

On a GPU this is the instrument for reproducing the paper's test-time numbers (rStar-Math Table 1: Qwen2.5-Math-7B
policy + PPM, MATH 58.8 greedy -> 90.0 with 64 MCTS trajectories):

    python bench/eval_scaling.py --policy openai:http://gpu:8000/v1#policy-r4 --ppm hf:ckpt/ppm-r4 \\
        --benchmarks math500,aime2024 --modes greedy,maj,bon,mcts --budgets 1,4,16,64 --data-dir data/benchmarks

On CPU, `--quick` runs the whole pipeline in a minute or two with deterministic fakes (no model): an arithmetic fake
policy that states the gold answer with probability 0.3, and an oracle PPM that scores right answers high, over 20
generated word problems (`rstar.data.world`). maj@k and best-of-N then climb with the budget, which checks the
instrument end to end:

    python bench/eval_scaling.py --quick

Writes to --out (default bench/out/eval_scaling): `scaling.json` (one point per benchmark x mode x budget with
accuracy, pass@1, pass@k, tokens and seconds per problem), `scaling.png`, and the evaluation reports themselves
(results.parquet, summary.json, table.md). Prints the accuracy table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def quick_setup(tmp: Path, n: int) -> dict[str, Any]:
    """Fake policy + oracle PPM + generated problems, for a model-free run of the whole instrument."""
    from rstar.data.problems import write_problems_jsonl
    from rstar.data.world import WorldConfig, generate_world

    world = generate_world(WorldConfig(seed=0, train=0, heldout=n, seed_sft=0))
    problems = [p.to_problem("world") for p in world.heldout]
    answers = tmp / "answers.jsonl"
    write_problems_jsonl(problems, answers)
    return {
        "policy": f"fake:oracle?answers={answers}&p_correct=0.3&p_error=0.1",
        "ppm": f"fake:oracle?answers={answers}",
        "benchmarks": {"world": problems},
    }


def curve_points(report: Any) -> list[dict[str, Any]]:
    """The scaling curve: one point per (benchmark, mode, budget)."""
    return [
        {
            "benchmark": s.benchmark,
            "mode": s.mode,
            "budget": s.budget,
            "problems": s.problems,
            "accuracy": round(s.accuracy, 6),
            "pass_at_1": round(s.pass_at_1, 6),
            "pass_at_k": round(s.pass_at_k, 6),
            "tokens_per_problem": round(s.mean_tokens, 1),
            "seconds_per_problem": round(s.mean_wall_time_s, 4),
            "errors": s.errors,
        }
        for s in report.summaries
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", help="policy model spec (see docs/architecture.md, Model specs)")
    ap.add_argument("--ppm", default=None, help="PPM spec (needed by bon, beam, mcts, mcts-topk)")
    ap.add_argument("--benchmarks", default="math500", help="comma-separated benchmark names (rstar eval --help)")
    ap.add_argument("--modes", default="greedy,maj,bon,mcts", help="comma-separated modes")
    ap.add_argument("--budgets", default="1,2,4,8,16,32,64", help="comma-separated budgets")
    ap.add_argument("--limit", type=int, default=None, help="first N problems per benchmark")
    ap.add_argument("--data-dir", default=None, help="local benchmark directory (else $RSTAR_BENCHMARK_DIR / hub)")
    ap.add_argument("--format", choices=("code", "cot"), default="code")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--batch-size", type=int, default=64, help="problems per batch (GPU servers like large batches)")
    ap.add_argument("--mcts-candidates", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "eval_scaling"))
    ap.add_argument("--quick", action="store_true", help="model-free run with fakes on 20 generated problems")
    args = ap.parse_args(argv)

    from rstar.eval.config import EvalConfig
    from rstar.eval.runner import evaluate

    budgets = [int(b) for b in _csv(args.budgets)]
    modes = _csv(args.modes)
    benchmarks: Any = _csv(args.benchmarks)
    policy, ppm = args.policy, args.ppm
    tmp = tempfile.TemporaryDirectory()
    if args.quick:
        q = quick_setup(Path(tmp.name), args.limit or 20)
        policy, ppm, benchmarks = q["policy"], q["ppm"], q["benchmarks"]
        if args.budgets == ap.get_default("budgets"):
            budgets = [1, 2, 4, 8]
        if args.modes == ap.get_default("modes"):
            modes = ["greedy", "maj", "bon", "mcts", "mcts-topk"]
    if not policy:
        ap.error("--policy is required (or use --quick)")

    config = EvalConfig(
        format=args.format,
        temperature=args.temperature,
        batch_size=args.batch_size,
        mcts_candidates=args.mcts_candidates,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    report = evaluate(
        policy,
        benchmarks,
        modes,
        budgets,
        args.out,
        reward_model=ppm,
        config=config,
        data_dir=args.data_dir,
        limit=None if args.quick else args.limit,
        progress=True,
        meta={"bench": "eval_scaling", "quick": args.quick},
    )
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    payload = {
        "policy": report.policy_id,
        "ppm": report.ppm_id,
        "quick": args.quick,
        "config": config.to_dict(),
        "elapsed_s": round(elapsed, 2),
        "points": curve_points(report),
        "errors": report.errors,
    }
    (out / "scaling.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(report.table())
    print(
        f"\n{len(report.results)} problem results in {elapsed:.1f} s; curve: {out / 'scaling.json'}, {out / 'scaling.png'}"
    )
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    tmp.cleanup()
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the MCTS engine: its own cost per expansion, and how busy it keeps a real small model on CPU.

    .venv/bin/python bench/mcts.py --quick --json /tmp/mcts.json    # under two minutes (model already prepared)
    .venv/bin/python bench/mcts.py                                   # bigger runs (~10 minutes on 2 cores)
    .venv/bin/python -m rstar.cli models prepare smollm2-135m        # once, before the first run (~1 minute)

(a) Bookkeeping: the search with a zero-cost fake policy (`fake:random-int`) and an in-process executor. The driver
    times every injected call (policy, executor, grader, PPM); what is left of the wall time is the engine's own
    work (selection, parsing, tree updates, back-up, rows), reported per expansion.
(b) A real model: SmolLM2-135M-Instruct (`smollm2-135m`, fp32) on CPU through the `hf` backend, the real sandbox
    executing its code. The same problems and seeds are searched twice: with cross-problem batching (every tree in
    flight, one policy call per tick carrying all their expansions) and one problem at a time (`max_active_trees=1`).
    Seeds are per tree, so both runs build the same trees up to floating-point rounding (batch shapes and prefix-cache
    hits change logits in the last bits, which can flip a sample at a near-tie): `identical_trees` counts them.
    Reported: the share of wall time spent inside `policy.generate` (batched run) and generated tokens per second of
    wall time for each variant. The machine drifts and is shared, so the full run interleaves the two variants over
    two halves of the problems (batched A, sequential A, sequential B, batched B) and sums them; --quick runs each
    variant once over 16 problems with 4 candidates per expansion.

SmolLM2-Instruct has not learned the step format, so each question carries a one-shot demonstration of it (the model
then writes steps ending in `<end_of_step>`), and failing or unparsable steps are kept in the tree (code_errors=keep)
so that trees grow to `--max-depth` and prompts lengthen as in a real search.

Targets (issue 2): bookkeeping < 1 ms per expansion; >= 85% of wall time inside the model; batching >= 3x the
tokens/s of one problem at a time. Prints a table; `--json PATH` writes bookkeeping_ms_per_expansion,
model_time_share, batched_tokens_per_s, sequential_tokens_per_s and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rstar.config import SearchConfig
from rstar.models.fakes import InProcessExecutor, make_fake_policy
from rstar.search import SearchStats, synthesize
from rstar.types import CodeExecutor, PolicyLM, Problem, SamplingSpec

ONE_SHOT = (
    "Example. Question: Sam has 2 bags of 5 marbles. How many marbles does he have?\n<code>\n"
    "# Step 1: multiply the bags by the marbles per bag\ntotal = 2 * 5\n<end_of_step>\n"
    "# Now print the final answer\nprint(total)\n<end_of_code>\n<output>\n10\n<end_of_output>\n"
    "<answer>\nThe answer is \\boxed{10}\n<end_of_answer>\n\nQuestion: "
)


def make_problems(n: int, seed: int, *, one_shot: bool) -> list[Problem]:
    """Short arithmetic word problems with gold answers (drawn from `seed`)."""
    rng = random.Random(seed)
    items = ("apples", "pencils", "books", "marbles", "stickers", "coins")
    names = ("Tom", "Ann", "Lia", "Raj", "Mei", "Omar")
    out = []
    for i in range(n):
        a, b, c = rng.randint(2, 40), rng.randint(2, 30), rng.randint(2, 9)
        name, item = rng.choice(names), rng.choice(items)
        if i % 2:
            q, gold = f"{name} has {a} {item} and buys {b} more. How many {item} does {name} have?", a + b
        else:
            q, gold = f"{name} has {c} boxes of {a} {item} and gives away {b}. How many {item} are left?", c * a - b
        out.append(Problem(id=f"b{i:04d}", question=(ONE_SHOT if one_shot else "") + q, answer=str(gold)))
    return out


def bookkeeping(problems: int, rollouts: int, seed: int) -> dict[str, Any]:
    """(a) the engine's own cost per expansion, with a policy and an executor that cost (almost) nothing."""
    policy = make_fake_policy("random-int?max=20&p_final=0.3")
    config = SearchConfig(rollouts=rollouts, candidates=8, max_depth=8, max_active_trees=64, seed=seed)
    res = synthesize(make_problems(problems, seed, one_shot=False), policy, InProcessExecutor(), config)
    s = res.stats
    return {
        "bookkeeping_ms_per_expansion": s.bookkeeping_ms_per_expansion,
        "expansions": s.prompts,
        "nodes": s.nodes,
        "wall_s": s.total_s,
        "bookkeeping_s": s.bookkeeping_s,
        "fake_policy_s": s.model_s,
        "exec_s": s.exec_s,
        "grade_s": s.grade_s,
    }


def _signature(nodes: Any) -> dict[str, list[tuple[str, str]]]:
    sig: dict[str, list[tuple[str, str]]] = {}
    for row in nodes.select("problem_id", "node_id", "step_text").iter_rows():
        sig.setdefault(row[0], []).append((row[1], row[2]))
    return {k: sorted(v) for k, v in sig.items()}


def _run(
    policy: PolicyLM, executor: CodeExecutor, problems: Sequence[Problem], config: SearchConfig
) -> tuple[SearchStats, dict[str, list[tuple[str, str]]]]:
    res = synthesize(problems, policy, executor, config)
    failed = res.problems.filter(res.problems["error"].is_not_null())
    if failed.height:
        raise RuntimeError(f"{failed.height} problems failed: {failed['error'][0]}")
    return res.stats, _signature(res.nodes)


def real_model(args: argparse.Namespace) -> dict[str, Any]:
    """(b) SmolLM2-135M through the hf backend: model share of wall time; batched vs one-problem-at-a-time tokens/s."""
    from rstar.models.policy_hf import HFPolicy
    from rstar.models.registry import resolve_local_model
    from rstar.verify.sandbox import Sandbox, SandboxConfig

    t = time.perf_counter()
    path = resolve_local_model(args.model)
    policy = HFPolicy(path, model_id=args.model, num_threads=args.threads)
    load_s = time.perf_counter() - t
    problems = make_problems(args.problems, args.seed + 1, one_shot=True)
    if args.quick:  # one pass each: batched, then sequential
        parts = {"A": problems}
        schedule = [("batched", "A"), ("sequential", "A")]
    else:  # interleaved over two halves against drift: batched A, sequential A, sequential B, batched B
        half = len(problems) // 2
        parts = {"A": problems[:half], "B": problems[half:]}
        schedule = [("batched", "A"), ("sequential", "A"), ("sequential", "B"), ("batched", "B")]
    base = SearchConfig(
        rollouts=args.rollouts,
        candidates=args.candidates,
        max_depth=args.max_depth,
        max_step_tokens=args.max_step_tokens,
        temperature=0.7,
        code_errors="keep",
        error_threshold=args.max_depth,
        unparsable="keep",
        seed=args.seed,
        abort_after_errors=0,
    )
    variants = {
        "batched": SearchConfig(**{**base.to_dict(), "max_active_trees": len(problems)}),
        "sequential": SearchConfig(**{**base.to_dict(), "max_active_trees": 1}),
    }
    totals = {v: {"tokens": 0, "wall_s": 0.0, "model_s": 0.0, "expansions": 0, "nodes": 0} for v in variants}
    sigs: dict[str, dict[str, Any]] = {v: {} for v in variants}
    with Sandbox(SandboxConfig(workers=2)) as sandbox:
        sandbox.run_batch(["print(1)", "print(2)"])  # start the workers before timing
        policy.generate(["warm up"], SamplingSpec(n=1, max_tokens=4))
        for variant, part in schedule:
            t = time.perf_counter()
            print(f"  {variant:10s} half {part} ({len(parts[part])} problems) ...", file=sys.stderr, flush=True)
            stats, sig = _run(policy, sandbox, parts[part], variants[variant])
            tot = totals[variant]
            tot["tokens"] += stats.tokens
            tot["wall_s"] += stats.total_s
            tot["model_s"] += stats.model_s
            tot["expansions"] += stats.prompts
            tot["nodes"] += stats.nodes
            sigs[variant].update(sig)
            print(
                f"  {variant:10s} half {part}: {stats.tokens} tokens in {time.perf_counter() - t:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    same = sum(sigs["batched"][p] == sigs["sequential"].get(p) for p in sigs["batched"])
    b, s = totals["batched"], totals["sequential"]
    return {
        "model": args.model,
        "load_s": load_s,
        "model_time_share": b["model_s"] / b["wall_s"],
        "batched_tokens_per_s": b["tokens"] / b["wall_s"],
        "sequential_tokens_per_s": s["tokens"] / s["wall_s"],
        "batching_speedup": (b["tokens"] / b["wall_s"]) / max(1e-9, s["tokens"] / s["wall_s"]),
        "sequential_model_time_share": s["model_s"] / s["wall_s"],
        "identical_trees": f"{same}/{len(problems)}",
        "batched": b,
        "sequential": s,
        "hf_stats": {
            "prompt_tokens": policy.stats.prompt_tokens,
            "cached_prompt_tokens": policy.stats.cached_prompt_tokens,
            "generated_tokens": policy.stats.generated_tokens,
            "prefill_s": round(policy.stats.prefill_s, 2),
            "decode_s": round(policy.stats.decode_s, 2),
            "threads": __import__("torch").get_num_threads(),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small runs: under two minutes")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--model", default="smollm2-135m", help="in-process model spec for (b) (default smollm2-135m)")
    ap.add_argument("--skip-model", action="store_true", help="only (a), the bookkeeping")
    ap.add_argument("--problems", type=int, default=None, help="(b) problems (32; 16 with --quick)")
    ap.add_argument("--candidates", type=int, default=None, help="(b) candidates per expansion (8; 4 with --quick)")
    ap.add_argument("--rollouts", type=int, default=None, help="(b) rollouts per problem (1)")
    ap.add_argument("--max-depth", type=int, default=None, help="(b) max depth (3; 2 with --quick)")
    ap.add_argument("--max-step-tokens", type=int, default=None, help="(b) tokens per step (48; 24 with --quick)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the CPUs available)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    q = args.quick
    args.problems = args.problems or (16 if q else 32)
    args.candidates = args.candidates or (4 if q else 8)
    args.rollouts = args.rollouts or 1
    args.max_depth = args.max_depth or (2 if q else 3)
    args.max_step_tokens = args.max_step_tokens or (24 if q else 48)

    started = time.perf_counter()
    print("(a) bookkeeping with a zero-cost fake policy ...", file=sys.stderr, flush=True)
    book = bookkeeping(64 if q else 256, 4 if q else 16, args.seed)
    model: dict[str, Any] = {}
    if not args.skip_model:
        print(f"(b) {args.model} on CPU through the hf backend ...", file=sys.stderr, flush=True)
        model = real_model(args)

    rows = [
        ("bookkeeping per expansion (fake policy)", f"{book['bookkeeping_ms_per_expansion']:.3f} ms", "< 1 ms"),
        ("  expansions / nodes", f"{book['expansions']} / {book['nodes']}", ""),
    ]
    if model:
        rows += [
            ("model share of wall time (batched)", f"{100 * model['model_time_share']:.1f} %", ">= 85 %"),
            ("tokens/s, cross-problem batching", f"{model['batched_tokens_per_s']:.1f}", ""),
            ("tokens/s, one problem at a time", f"{model['sequential_tokens_per_s']:.1f}", ""),
            ("batching speedup", f"{model['batching_speedup']:.2f}x", ">= 3x"),
            ("identical trees (batched vs sequential)", model["identical_trees"], "all"),
            (
                "expansions (batched / sequential)",
                f"{model['batched']['expansions']} / {model['sequential']['expansions']}",
                "",
            ),
            ("tokens (batched / sequential)", f"{model['batched']['tokens']} / {model['sequential']['tokens']}", ""),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")
    result = {
        "bookkeeping_ms_per_expansion": book["bookkeeping_ms_per_expansion"],
        "model_time_share": model.get("model_time_share"),
        "batched_tokens_per_s": model.get("batched_tokens_per_s"),
        "sequential_tokens_per_s": model.get("sequential_tokens_per_s"),
        "batching_speedup": model.get("batching_speedup"),
        "bookkeeping": book,
        "real_model": model,
        "config": {
            k: getattr(args, k)
            for k in ("quick", "problems", "candidates", "rollouts", "max_depth", "max_step_tokens", "seed")
        },
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version()},
        "wall_s": time.perf_counter() - started,
    }
    print(f"\ntotal {result['wall_s']:.0f}s", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

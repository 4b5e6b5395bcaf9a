"""Which problems can the bootstrap solve at all? Per-level coverage of seed-SFT bootstraps on the world's held-out split.

    .venv/bin/python bench/bootstrap_levels.py --json bench/results/bootstrap-levels.json     # ~4 min per variant of 48
    .venv/bin/python bench/bootstrap_levels.py --variant 1,2:48 --variant 1,2,3,4,5:96        # other seed splits

Self-evolution only amplifies what its round-1 generator can already do: a problem enters the SFT data and the
preference pairs only once some trajectory reaches its answer. The evolution benchmark (BENCHMARKS.md) found that
neither the policy nor the PPM improved on world levels 3-5 because no tree ever held a correct answer there; this
script measures that cause directly. Each `--variant LEVELS:N` fine-tunes SmolLM2-135M-Instruct on N reference
solutions drawn from those world levels (the CPU stand-in for the paper's large bootstrap model; by default round 0 of
`bench/evolution.py --quick` and of its mid-size run: 2 epochs at 3e-4, batch 8; its default budget's is
`--epochs 3 --lr 1e-4`) and evaluates it on the held-out split (world seed 0, the
same problems for every variant): greedy and maj@k, with per level the problems solved and the problems *covered*
(some of the k samples correct: what a round could ever train on). Prints the table; `--json` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class Variant:
    levels: tuple[int, ...]
    examples: int

    @classmethod
    def parse(cls, text: str) -> Variant:
        levels, _, n = text.partition(":")
        return cls(tuple(int(x) for x in levels.split(",") if x.strip()), int(n or 48))

    @property
    def name(self) -> str:
        return f"levels {','.join(map(str, self.levels))} x {self.examples}"


def run_variant(v: Variant, args: argparse.Namespace) -> dict[str, Any]:
    import polars as pl

    from rstar.data.problems import load_problems
    from rstar.data.world import WorldConfig, generate_world, write_world
    from rstar.eval.config import EvalConfig
    from rstar.eval.runner import evaluate
    from rstar.models.registry import load_policy, resolve_local_model
    from rstar.train.common import TrainConfig
    from rstar.train.policy import train_policy
    from tasks.common import shared_executor

    out = args.out / f"levels-{''.join(map(str, v.levels))}-n{v.examples}"
    world = generate_world(
        WorldConfig(seed=0, train=args.train, heldout=args.heldout, seed_sft=v.examples, seed_levels=v.levels)
    )
    paths = write_world(world, out / "world")
    rows = [json.loads(line) for line in paths["seed_sft"].read_text().splitlines()]
    t0 = time.perf_counter()
    cfg = TrainConfig(
        learning_rate=args.lr, num_epochs=args.epochs, batch_size=8, max_length=512, warmup=0.1, weight_decay=0.0
    )
    train_policy(pl.DataFrame(rows), resolve_local_model("smollm2-135m"), out / "policy", cfg)
    train_s = time.perf_counter() - t0
    held, _ = load_problems(paths["heldout"])
    t0 = time.perf_counter()
    rep = evaluate(
        load_policy(f"hf:{out / 'policy'}"),
        {"heldout": held},
        modes=("greedy", "maj"),
        budgets=(args.k,),
        out_dir=out / "eval",
        executor=shared_executor(),
        config=EvalConfig(format="code", seed=0, max_steps=6, max_step_tokens=64),
        plot=False,
    )
    levels: dict[str, dict[str, int]] = {}
    for r in rep.results:
        cell = levels.setdefault(str(r.level), {"problems": 0, "greedy": 0, f"maj@{args.k}": 0, "covered": 0})
        if r.mode == "greedy":
            cell["problems"] += 1
            cell["greedy"] += int(r.correct)
        else:
            cell[f"maj@{args.k}"] += int(r.correct)
            cell["covered"] += int(r.n_correct > 0)
    return {
        "variant": v.name,
        "seed_levels": list(v.levels),
        "seed_examples": v.examples,
        "greedy": round(100 * rep.accuracy("heldout", "greedy", 1), 1),
        f"maj@{args.k}": round(100 * rep.accuracy("heldout", "maj", args.k), 1),
        "by_level": dict(sorted(levels.items())),
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - t0, 1),
    }


def table(results: list[dict[str, Any]], k: int) -> str:
    levels = sorted({lv for r in results for lv in r["by_level"]})
    head = ["bootstrap seed SFT", "greedy %", f"maj@{k} %"] + [f"level {lv}: greedy / covered" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["variant"], f"{r['greedy']:.1f}", f"{r[f'maj@{k}']:.1f}"]
        for lv in levels:
            c = r["by_level"].get(lv)
            cells.append("" if c is None else f"{c['greedy']} / {c['covered']} of {c['problems']}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=None, metavar="LEVELS:N",
                    help="seed SFT levels and size (default: 1,2:48 and 1,2,3,4,5:48, as in the evolution benchmark)")  # fmt: skip
    ap.add_argument("--heldout", type=int, default=64, help="held-out problems (the first N of the world's split)")
    ap.add_argument("--train", type=int, default=48, help="train split size (only to draw the same splits)")
    ap.add_argument("--k", type=int, default=4, help="samples for maj@k and coverage")
    ap.add_argument("--epochs", type=float, default=2.0, help="seed SFT epochs (evolution's default budget: 3)")
    ap.add_argument("--lr", type=float, default=3e-4, help="seed SFT learning rate (evolution's default budget: 1e-4)")
    ap.add_argument("--out", type=Path, default=ROOT / ".rstar" / "bench" / "bootstrap-levels")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    variants = [Variant.parse(t) for t in (args.variant or ["1,2:48", "1,2,3,4,5:48"])]
    started = time.perf_counter()
    results = [run_variant(v, args) for v in variants]
    print(table(results, args.k))
    wall = round(time.perf_counter() - started, 1)
    print(f"total wall time {wall / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "results": results,
            "heldout": args.heldout,
            "k": args.k,
            "seed_sft_recipe": {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": 8},
            "wall_s": wall,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

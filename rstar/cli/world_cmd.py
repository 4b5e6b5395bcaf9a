"""`rstar world`: write a seeded problem world (train / held-out / seed splits) for CPU self-evolution runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "world",
        help="generate a seeded world of math word problems (train / held-out / seed SFT splits)",
        description="Write train.jsonl, heldout.jsonl, seed.jsonl, seed_sft.jsonl and world.json to OUT.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--train", type=int, default=400, help="training problems (default 400)")
    p.add_argument("--heldout", type=int, default=200, help="held-out problems (default 200)")
    p.add_argument("--seed-sft", type=int, default=48, help="reference solutions for the bootstrap SFT (default 48)")
    p.add_argument("--levels", default="1,2,3,4,5", help="comma-separated difficulty levels to draw (default 1-5)")
    p.add_argument(
        "--seed-levels",
        default="1,2",
        help="levels of the seed SFT's reference solutions (default 1,2: the bootstrap sees the format on easy "
        "problems only; include harder levels for a bootstrap that can solve them, BENCHMARKS.md)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rstar.data.world import WorldConfig, generate_world, write_world

    try:
        levels = tuple(int(x) for x in args.levels.split(",") if x.strip())
        seed_levels = tuple(int(x) for x in args.seed_levels.split(",") if x.strip())
        base = WorldConfig()
        weights = tuple(w for lv, w in zip(base.levels, base.level_weights, strict=True) if lv in levels)
        cfg = WorldConfig(
            seed=args.seed,
            train=args.train,
            heldout=args.heldout,
            seed_sft=args.seed_sft,
            levels=levels,
            level_weights=weights,
            seed_levels=seed_levels,
        )
    except ValueError as exc:
        print(f"rstar world: {exc}")
        return 2
    paths = write_world(generate_world(cfg), args.out)
    for name, path in paths.items():
        print(f"{name:9s} {path}")
    return 0

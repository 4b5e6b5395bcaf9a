"""`rstar build-data`: turn search trees into the round's training data and data-quality report.

    rstar build-data --trees runs/r1/trees [--trees runs/r1/extra] --out runs/r1/data [--k 2] [--margin 0.0]

Reads every node / problem Parquet file under the tree directories (several shards of one problem are merged), and
writes `sft.parquet` (top-k correct trajectories per problem), `pairs.parquet` (PPM step and final-step pairs),
`aggregate/` (per-problem stats, per-depth Q stats, the re-run list), `report/` (report.json, report.md, plots) and
`summary.json`, then prints a summary. Library entry point: `rstar.data.report.build_data`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-data",
        help="SFT data, PPM preference pairs and the data-quality report from search trees",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trees", action="append", required=True, metavar="DIR", help="tree directory (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--k", type=int, default=2, help="correct trajectories per problem for SFT (default 2)")
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="keep pairs with Q(chosen) > Q(rejected) and a Q gap >= this (default 0.0; the reference uses 0.5)",
    )
    p.add_argument("--no-margin", action="store_true", help="keep every chosen x rejected pair, whatever the Qs")
    p.add_argument("--top-n", type=int, default=2, help="chosen / rejected candidates per node (default 2)")
    p.add_argument("--single-n", type=int, default=4, help="other side's count when one side has one (default 4)")
    p.add_argument("--no-final-pairs", action="store_true", help="skip the paper's whole-trajectory final pairs")
    p.add_argument("--extra-rollouts-hard", type=int, default=16, help="extra rollouts for unsolved problems")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rstar.data.pairs import PairConfig
    from rstar.data.qvalues import AggregateConfig
    from rstar.data.report import build_data

    try:
        pair_cfg = PairConfig(
            top_n=args.top_n,
            single_n=args.single_n,
            margin=None if args.no_margin else args.margin,
            final_pairs=not args.no_final_pairs,
        )
        agg_cfg = AggregateConfig(extra_rollouts_hard=args.extra_rollouts_hard)
        if args.k < 1:
            raise ValueError(f"--k must be >= 1, got {args.k}")
        summary = build_data(
            args.trees,
            args.out,
            k=args.k,
            pair_config=pair_cfg,
            aggregate_config=agg_cfg,
            plots=not args.no_plots,
            progress=not args.quiet,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"rstar build-data: error: {exc}", file=sys.stderr)
        return 2
    c, inputs = summary["counts"], summary["inputs"]
    print(
        f"build-data: {c['problems']} problems, {c['trees']} trees, {c['nodes']} nodes "
        f"from {len(inputs['node_files'])} node files -> {c['sft_rows']} SFT rows "
        f"({summary['sft']['selected_problems']} problems), {c['pairs']} pairs "
        f"({summary['pairs']['step_pairs']} step, {summary['pairs']['final_pairs']} final), "
        f"{c['rerun_problems']} problems to re-run"
    )
    print(
        f"  coverage {summary['report']['coverage']}, mean solve rate {summary['report']['mean_solve_rate']}, "
        f"code-error rate {summary['report']['code_error_rate']}; written to {args.out}"
    )
    for key in ("empty_files", "skipped_files"):
        for f in inputs[key]:
            print(f"  warning: {key.replace('_', ' ')[:-1]}: {f}", file=sys.stderr)
    if summary["tree_issues"]["messages"]:
        print(f"  warning: tree issues: {json.dumps(summary['tree_issues']['messages'][:5])}", file=sys.stderr)
    if "warning" in summary:
        print(f"  warning: {summary['warning']}", file=sys.stderr)
    return 0

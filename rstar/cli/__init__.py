"""The core command line: one sub-command module per stage, each a thin wrapper over one library function.

Every module in `CORE_COMMANDS` defines `register(subparsers)`, adding its parser with `set_defaults(func=run)`;
`run(args) -> int` does the work. Modules keep heavy imports (torch, transformers, polars) inside `run`, so
`rstar --help` and `rstar exec` start fast.

The `rstar` console script is `infra.cli:main`: it adds the platform commands (stack, deploy, lineage, evolve, demo)
that need Prefect, MLflow or S3, which this pure package must not import. `python -m rstar.cli` gives the core ones.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

CORE_COMMANDS: tuple[str, ...] = (
    "rstar.cli.exec_cmd",  # rstar exec
    "rstar.cli.grade_cmd",  # rstar grade
    "rstar.cli.synthesize_cmd",  # rstar synthesize
    "rstar.cli.data_cmd",  # rstar build-data
    "rstar.cli.train_cmd",  # rstar train-policy / train-ppm
    "rstar.cli.eval_cmd",  # rstar eval
    "rstar.cli.world_cmd",  # rstar world
    "rstar.cli.models_cmd",  # rstar models
)


def register_modules(sub: argparse._SubParsersAction, modules: Sequence[str]) -> None:
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # the command module itself is not part of this build
                continue
            raise
        mod.register(sub)


def build_parser(extra_modules: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rstar",
        description="rstar-evolve: rStar-Math style self-evolution of small math reasoning models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register_modules(sub, CORE_COMMANDS)
    register_modules(sub, extra_modules)
    return parser


def main(argv: Sequence[str] | None = None, extra_modules: Sequence[str] = ()) -> int:
    parser = build_parser(extra_modules)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

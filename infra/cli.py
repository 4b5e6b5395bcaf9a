"""The `rstar` console script: core commands from `rstar.cli` plus the platform commands that use Prefect/MLflow/S3."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rstar.cli import main as core_main

PLATFORM_COMMANDS: tuple[str, ...] = (
    "infra.commands.evolve_cmd",  # rstar evolve / rstar round / rstar demo
    "infra.commands.lineage_cmd",  # rstar lineage
    "infra.commands.stack_cmd",  # rstar stack up|down|status, rstar deploy
)


def main(argv: Sequence[str] | None = None) -> int:
    return core_main(argv, extra_modules=PLATFORM_COMMANDS)


if __name__ == "__main__":
    sys.exit(main())

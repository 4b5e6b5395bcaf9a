"""`rstar lineage MODEL_URI`: print what a registered model was made from, down to the problem set.

    rstar lineage models:/rstar-ppm/3
    rstar lineage models:/rstar-policy@champion --json
    rstar lineage models:/rstar-ppm@candidate --follow-models --tracking-uri http://127.0.0.1:5000

Reads the MLflow registry named by RSTAR_MLFLOW_TRACKING_URI (or --tracking-uri) and the artifact manifests the
model's inputs point at (file:// or s3:// with RSTAR_S3_ENDPOINT_URL). See infra/lineage.py and
docs/storage-and-lineage.md.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "lineage",
        help="walk back from a registered model to its runs, datasets, artifacts and problem set",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS (e.g. models:/rstar-ppm@champion)")
    p.add_argument("--json", action="store_true", help="print the graph as JSON (nodes and edges) instead of a tree")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: RSTAR_MLFLOW_TRACKING_URI)")
    p.add_argument("--follow-models", action="store_true", help="also walk into models that are artifacts themselves")
    p.add_argument("--max-depth", type=int, default=64, help="stop following parents after this many hops")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra.lineage import LineageError, lineage
    from infra.settings import Settings, get_settings
    from infra.storage import StorageError

    settings = get_settings()
    if args.tracking_uri:
        settings = Settings(**{**settings.model_dump(), "mlflow_tracking_uri": args.tracking_uri})
    try:
        graph = lineage(args.model_uri, settings=settings, max_depth=args.max_depth, follow_models=args.follow_models)
    except (LineageError, StorageError) as exc:
        print(f"rstar lineage: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(graph.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        print(graph.render())
    return 0

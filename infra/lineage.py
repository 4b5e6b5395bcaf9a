"""Walk back from a registered model to everything that produced it: `rstar lineage models:/rstar-ppm/3`.

    from infra.lineage import lineage
    graph = lineage("models:/rstar-ppm@champion")
    print(graph.render())                      # an indented tree
    graph.find(kind="artifact", stage="trees") # nodes by kind / stage
    graph.to_dict()                            # JSON-able (`rstar lineage --json`)

The walk: model version (MLflow registry) -> the run that registered it -> the datasets that run logged as inputs
(`mlflow.log_input`: source URI + digest) and the model's own artifact (`rstar.artifact_uri` tag) -> each artifact's
`manifest.json` -> its parents -> ... until artifacts without parents (the problem set). Models an artifact was made
with (the policy that searched the trees, a PPM) are shown as leaves; follow one with another `rstar lineage` call.

Nothing here writes: it reads the MLflow tracking server / database named by the settings and the artifact stores
the URIs point at (file:// or s3://, with the configured S3 endpoint). An artifact that cannot be read shows as a
`missing` node with the reason, so a partial store still yields the rest of the graph.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from infra.settings import Settings, get_settings
from infra.storage import Manifest, StorageError, store_for_uri
from infra.tracking import Tracker, get_tracker

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


class LineageError(RuntimeError):
    """The starting model cannot be found (bad URI, unknown model or alias, tracking off)."""


@dataclass(frozen=True)
class LineageNode:
    """One thing in the graph: a `model_version`, a `run`, an `artifact`, a `model_ref` or a `missing` artifact."""

    id: str  # models:/name/version, runs:/<id>, the artifact URI, or the model spec
    kind: str
    label: str
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class LineageEdge:
    """`child` was made from `parent`; `role` says how (an input context, "registered by", "policy", ...)."""

    child: str
    parent: str
    role: str


@dataclass
class LineageGraph:
    root: str
    nodes: dict[str, LineageNode] = field(default_factory=dict)
    edges: list[LineageEdge] = field(default_factory=list)

    def add(self, node: LineageNode) -> LineageNode:
        return self.nodes.setdefault(node.id, node)

    def link(self, child: str, parent: str, role: str) -> None:
        edge = LineageEdge(child, parent, role)
        if edge not in self.edges:
            self.edges.append(edge)

    def parents(self, node_id: str) -> list[tuple[str, LineageNode]]:
        """(role, node) for every direct parent of a node, in discovery order."""
        return [(e.role, self.nodes[e.parent]) for e in self.edges if e.child == node_id]

    def ancestors(self, node_id: str) -> list[LineageNode]:
        seen: dict[str, LineageNode] = {}
        queue = deque([node_id])
        while queue:
            for _, parent in self.parents(queue.popleft()):
                if parent.id not in seen:
                    seen[parent.id] = parent
                    queue.append(parent.id)
        return list(seen.values())

    def find(self, *, kind: str | None = None, stage: str | None = None) -> list[LineageNode]:
        return [
            n
            for n in self.nodes.values()
            if (kind is None or n.kind == kind) and (stage is None or n.attrs.get("stage") == stage)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "nodes": [{"id": n.id, "kind": n.kind, "label": n.label, "attrs": n.attrs} for n in self.nodes.values()],
            "edges": [{"child": e.child, "parent": e.parent, "role": e.role} for e in self.edges],
        }

    def render(self) -> str:
        """An indented tree from the root; a node reached twice is printed once and then referred to."""
        lines: list[str] = []
        printed: set[str] = set()

        def describe(node: LineageNode) -> str:
            extra = node.attrs.get("summary")
            return f"{node.label}  [{node.kind}]" + (f"  {extra}" if extra else "")

        def walk(node_id: str, prefix: str, path: tuple[str, ...]) -> None:
            kids = self.parents(node_id)
            for i, (role, node) in enumerate(kids):
                last = i == len(kids) - 1
                branch, indent = ("└── ", "    ") if last else ("├── ", "│   ")
                if node.id in printed or node.id in path:
                    lines.append(f"{prefix}{branch}{role}: {node.label}  (see above)")
                    continue
                printed.add(node.id)
                lines.append(f"{prefix}{branch}{role}: {describe(node)}")
                walk(node.id, prefix + indent, (*path, node.id))

        root = self.nodes[self.root]
        printed.add(root.id)
        lines.append(describe(root))
        walk(root.id, "", (root.id,))
        return "\n".join(lines)


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of `models:/name/3` or `models:/name@alias`."""
    m = _MODEL_URI.match(model_uri.strip())
    if not m:
        raise LineageError(f"{model_uri!r} is not a model URI: use models:/NAME/VERSION or models:/NAME@ALIAS")
    return m["name"], m["version"], m["alias"]


def _source_uri(source: str) -> str:
    """MLflow stores a dataset source as JSON ({"uri": ...}); older or custom sources may be a bare string."""
    try:
        data = json.loads(source)
    except (TypeError, ValueError):
        return str(source)
    if isinstance(data, dict):
        for key in ("uri", "url", "path"):
            if data.get(key):
                return str(data[key])
    return str(source)


def _read_manifest(uri: str, settings: Settings) -> tuple[str, Manifest]:
    """(artifact URI, manifest) for an artifact URI or a file inside one (stages log the tables they read as sources).

    Walks up from the URI until a folder with a manifest is found (at most a few levels, never above the bucket).
    """
    candidate = uri.rstrip("/")
    scheme_end = candidate.find("://") + 3
    first: StorageError | None = None
    for _ in range(6):
        try:
            return candidate, store_for_uri(candidate, settings).read_manifest(candidate)
        except StorageError as exc:
            first = first or exc
        head = candidate.rpartition("/")[0]
        if len(head) <= scheme_end or head.count("/") < 3:
            break
        candidate = head
    assert first is not None
    raise first


def _artifact_node(uri: str, manifest: Manifest) -> LineageNode:
    where = f"round {manifest.round}" if manifest.round is not None else "shared"
    summary = f"{where}, digest {manifest.digest}" + (f", {manifest.rows} rows" if manifest.rows is not None else "")
    return LineageNode(
        id=uri,
        kind="artifact",
        label=f"{manifest.stage} {manifest.key}",
        attrs={
            "uri": uri,
            "stage": manifest.stage,
            "round": manifest.round,
            "digest": manifest.digest,
            "rows": manifest.rows,
            "git_commit": manifest.git_commit,
            "created_at": manifest.created_at,
            "models": manifest.models,
            "summary": summary,
        },
    )


def lineage(
    model_uri: str,
    *,
    settings: Settings | None = None,
    tracker: Tracker | None = None,
    max_depth: int = 64,
    follow_models: bool = False,
) -> LineageGraph:
    """The graph of everything a registered model came from (see the module docstring).

    `follow_models` also walks into models that are themselves artifacts (e.g. the previous round's policy that
    searched this round's trees), giving the lineage across rounds; otherwise they are leaves.
    """
    name, version, alias = parse_model_uri(model_uri)
    settings = settings or get_settings()
    tracker = tracker or get_tracker(settings)
    if not tracker.enabled:
        raise LineageError("tracking is off (RSTAR_MLFLOW_TRACKING_URI=off): there is no registry to start from")
    from mlflow.exceptions import MlflowException

    client = tracker.client
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise LineageError(
            f"{model_uri}: not found in the registry at {tracker.tracking_uri} ({exc.message})"
        ) from None

    root_id = f"models:/{name}/{mv.version}"
    graph = LineageGraph(root=root_id)
    mv_tags = dict(mv.tags or {})
    aliases = list(getattr(mv, "aliases", []) or [])
    graph.add(
        LineageNode(
            id=root_id,
            kind="model_version",
            label=f"{name} v{mv.version}",
            attrs={
                "name": name,
                "version": str(mv.version),
                "aliases": aliases,
                "source": mv.source,
                "run_id": mv.run_id,
                "tags": mv_tags,
                "summary": ", ".join(f"@{a}" for a in aliases),
            },
        )
    )
    queue: deque[tuple[str, str, str, str | None, int]] = deque()  # (child id, uri, role, logged digest, depth)

    if mv_tags.get("rstar.artifact_uri"):
        queue.append((root_id, mv_tags["rstar.artifact_uri"], "model artifact", mv_tags.get("rstar.digest"), 1))

    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
        except MlflowException as exc:
            graph.add(LineageNode(f"runs:/{mv.run_id}", "missing", f"run {mv.run_id}", {"error": exc.message}))
            graph.link(root_id, f"runs:/{mv.run_id}", "registered by")
        else:
            run_tags = dict(run.data.tags)
            run_id = f"runs:/{run.info.run_id}"
            parent_run = run_tags.get("mlflow.parentRunId")
            parent_name = None
            if parent_run:
                with contextlib.suppress(MlflowException):
                    parent_name = client.get_run(parent_run).info.run_name
            graph.add(
                LineageNode(
                    id=run_id,
                    kind="run",
                    label=f"run {run.info.run_name} ({run.info.run_id[:8]})",
                    attrs={
                        "run_id": run.info.run_id,
                        "run_name": run.info.run_name,
                        "status": run.info.status,
                        "parent_run_id": parent_run,
                        "parent_run_name": parent_name,
                        "git_commit": run_tags.get("rstar.git_commit"),
                        "prefect_flow_run_id": run_tags.get("prefect.flow_run_id"),
                        "summary": ", ".join(
                            x
                            for x in (
                                f"in {parent_name}" if parent_name else "",
                                f"git {run_tags['rstar.git_commit'][:12]}" if run_tags.get("rstar.git_commit") else "",
                            )
                            if x
                        ),
                    },
                )
            )
            graph.link(root_id, run_id, "registered by")
            for ds_input in run.inputs.dataset_inputs if run.inputs else []:
                input_tags = {t.key: t.value for t in ds_input.tags}
                source = input_tags.get("rstar.source") or _source_uri(ds_input.dataset.source)
                digest = input_tags.get("rstar.digest") or ds_input.dataset.digest
                role = input_tags.get("mlflow.data.context") or ds_input.dataset.name
                queue.append((run_id, source, f"input {role}", digest, 1))

    seen_sources: dict[str, str] = {}  # logged source URI -> artifact node id
    while queue:
        child, uri, role, logged_digest, depth = queue.popleft()
        if uri in seen_sources:
            graph.link(child, seen_sources[uri], role)
            continue
        try:
            artifact_uri, manifest = _read_manifest(uri, settings)
        except StorageError as exc:
            graph.add(LineageNode(uri, "missing", uri, {"uri": uri, "error": str(exc), "summary": "unreadable"}))
            graph.link(child, uri, role)
            seen_sources[uri] = uri
            continue
        seen_sources[uri] = artifact_uri
        fresh = artifact_uri not in graph.nodes
        node = graph.add(_artifact_node(artifact_uri, manifest))
        if logged_digest and logged_digest != manifest.digest:
            node.attrs["digest_mismatch"] = f"logged {logged_digest}, stored {manifest.digest}"
            node.attrs["summary"] += f"  DIGEST MISMATCH (logged {logged_digest})"
        graph.link(child, artifact_uri, role)
        if not fresh or depth >= max_depth:
            continue
        for parent in manifest.parents:
            if parent.get("uri"):
                queue.append(
                    (
                        artifact_uri,
                        str(parent["uri"]),
                        str(parent.get("role", "parent")),
                        parent.get("digest"),
                        depth + 1,
                    )
                )
        for model_role, spec in sorted(manifest.models.items()):
            if not spec:
                continue
            model_id = str(spec)
            if follow_models and model_id.startswith(("file://", "s3://")):
                queue.append((artifact_uri, model_id, f"model {model_role}", None, depth + 1))
                continue
            graph.add(LineageNode(model_id, "model_ref", model_id, {"spec": model_id}))
            graph.link(artifact_uri, model_id, f"model {model_role}")
    return graph

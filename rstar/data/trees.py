"""Rebuild search trees and root-to-leaf trajectories from the flat node rows that `rstar synthesize` writes.

The MCTS engine stores one row per node (`rstar.data.schema.NODES_SCHEMA`); SFT selection, preference pairs and the
data-quality report need the tree back: children per node, the path from the root, and which outcomes each subtree
reaches. This module does that once, in plain Python, and the other data modules work on `Tree` objects:

    data = load_tree_dirs(["runs/r1/trees", "runs/r1/extra"])    # every Parquet file below, merged
    trees, issues = build_trees(data.nodes)
    for tree in trees:
        for traj in tree.trajectories():
            print(tree.problem_id, traj.outcome, traj.avg_q)

Only the `parent_id` links define the tree (node ids are never parsed for structure); node ids order siblings
"naturally" ("0.2" before "0.10"), which makes every selection below deterministic.

Several tree files may hold the same problem (extra rollouts for hard problems run as a second shard): each file's tree
is kept apart under its own `tree_id` (`problem_id` when the problem occurs once, else `problem_id#<file index>`), so
node ids never collide; per-problem statistics and SFT selection pool the trees of a problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from rstar.data.schema import NODES_SCHEMA, PROBLEMS_SCHEMA, SchemaError, empty, validate
from rstar.verify.steps import build_prompt

Outcome = Literal["correct", "wrong", "ungraded", "code_error", "max_depth", "unparsable", "open"]
# Terminal reasons that are answers (graded) vs. failures that carry no answer.
ANSWER = "answer"
CODE_ERROR = "code_error"


def natural_key(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key for child-index paths: "0.2" < "0.10" (numeric parts compare as numbers, others as text)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in node_id.split("."))


@dataclass(frozen=True)
class Node:
    """The fields of one node row that the data stages use."""

    node_id: str
    parent_id: str | None
    depth: int
    step_text: str
    is_terminal: bool
    terminal_reason: str | None
    answer: str | None
    correct: bool | None
    exec_ok: bool | None
    q: float | None
    visits: int

    @property
    def qv(self) -> float:
        """Q for ranking: a never-visited node (q null) counts as 0, the value UCT gives unvisited children."""
        return 0.0 if self.q is None else float(self.q)

    @property
    def is_answer(self) -> bool:
        return self.is_terminal and (
            self.terminal_reason == ANSWER or (self.terminal_reason is None and self.answer is not None)
        )

    @property
    def outcome(self) -> Outcome:
        """What a rollout ending here produced. `open`: a non-terminal leaf (the search stopped before a terminal)."""
        if self.is_answer:
            return "ungraded" if self.correct is None else ("correct" if self.correct else "wrong")
        if not self.is_terminal:
            return "open"
        if self.terminal_reason in ("code_error", "max_depth", "unparsable"):
            return self.terminal_reason  # type: ignore[return-value]
        return "unparsable"


@dataclass(frozen=True)
class Trajectory:
    """A root-to-leaf path: the steps (root excluded), their Q-values and how it ended.

    `has_exec_error` is True when any step's accumulated code failed (`exec_ok` False): the reference drops such
    traces from SFT data even when they end in a correct answer.
    """

    tree_id: str
    problem_id: str
    leaf_id: str
    node_ids: tuple[str, ...]
    step_texts: tuple[str, ...]
    qs: tuple[float, ...]
    outcome: Outcome
    has_exec_error: bool

    @property
    def num_steps(self) -> int:
        return len(self.node_ids)

    @property
    def avg_q(self) -> float:
        return sum(self.qs) / len(self.qs) if self.qs else 0.0

    @property
    def min_q(self) -> float:
        return min(self.qs) if self.qs else 0.0

    @property
    def completion(self) -> str:
        """The steps' text concatenated: the SFT target after `build_prompt(question)`."""
        return "".join(self.step_texts)


@dataclass
class Tree:
    """One search tree: nodes by id, children in natural order, and the root."""

    tree_id: str
    problem_id: str
    root: str
    nodes: dict[str, Node]
    children: dict[str, list[str]]
    _flags: dict[str, tuple[bool, bool]] | None = field(default=None, repr=False)

    def path(self, node_id: str) -> list[str]:
        """Node ids from the root to `node_id`, both included."""
        out = [node_id]
        while (parent := self.nodes[out[-1]].parent_id) is not None:
            out.append(parent)
        return out[::-1]

    def step_ids(self, node_id: str) -> list[str]:
        """The steps (root excluded) from the first step to `node_id`."""
        return self.path(node_id)[1:]

    def prefix(self, question: str, node_id: str, template: str | None = None) -> str:
        """The text the policy saw after `node_id`: prompt + every step text along the path."""
        prompt = build_prompt(question) if template is None else build_prompt(question, template)
        return prompt + "".join(self.nodes[i].step_text for i in self.step_ids(node_id))

    def leaves(self) -> list[str]:
        """Nodes without children (terminal or not), in natural order, the root excluded."""
        return sorted(
            (i for i in self.nodes if i != self.root and not self.children.get(i)),
            key=natural_key,
        )

    def trajectory(self, leaf_id: str) -> Trajectory:
        steps = [self.nodes[i] for i in self.step_ids(leaf_id)]
        return Trajectory(
            tree_id=self.tree_id,
            problem_id=self.problem_id,
            leaf_id=leaf_id,
            node_ids=tuple(n.node_id for n in steps),
            step_texts=tuple(n.step_text for n in steps),
            qs=tuple(n.qv for n in steps),
            outcome=self.nodes[leaf_id].outcome,
            has_exec_error=any(n.exec_ok is False for n in steps),
        )

    def trajectories(self) -> list[Trajectory]:
        return [self.trajectory(i) for i in self.leaves()]

    def flags(self, node_id: str) -> tuple[bool, bool]:
        """(reaches a correct answer, reaches a wrong answer) for the subtree under `node_id`, itself included.

        Code-error, max-depth and unparsable leaves reach neither: they are not wrong *answers*.
        """
        if self._flags is None:
            # post-order from the root (children before parents), not trusting the depth column
            order: list[str] = []
            stack = [self.root]
            while stack:
                cur = stack.pop()
                order.append(cur)
                stack.extend(self.children.get(cur, ()))
            flags: dict[str, tuple[bool, bool]] = {}
            for nid in reversed(order):
                out = self.nodes[nid].outcome
                good, bad = out == "correct", out == "wrong"
                for c in self.children.get(nid, ()):
                    cg, cb = flags[c]
                    good, bad = good or cg, bad or cb
                flags[nid] = (good, bad)
            self._flags = flags
        return self._flags[node_id]


@dataclass
class TreeIssues:
    """Rows that could not be placed in a tree, and trees that could not be built, with the reason."""

    messages: list[str] = field(default_factory=list)
    dropped_nodes: int = 0
    dropped_trees: int = 0

    def add(self, msg: str, *, nodes: int = 0, trees: int = 0) -> None:
        self.messages.append(msg)
        self.dropped_nodes += nodes
        self.dropped_trees += trees


def with_tree_id(nodes: pl.DataFrame) -> pl.DataFrame:
    """Add a `tree_id` column (= problem_id) to a node frame that has none."""
    if "tree_id" in nodes.columns:
        return nodes
    return nodes.with_columns(pl.col("problem_id").alias("tree_id"))


def _node(row: dict) -> Node:
    return Node(
        node_id=str(row["node_id"]),
        parent_id=row["parent_id"],
        depth=int(row["depth"] or 0),
        step_text=row["step_text"] or "",
        is_terminal=bool(row["is_terminal"]),
        terminal_reason=row["terminal_reason"],
        answer=row["answer"],
        correct=row["correct"],
        exec_ok=row["exec_ok"],
        q=row["q"],
        visits=int(row["visits"] or 0),
    )


def build_trees(nodes: pl.DataFrame) -> tuple[list[Tree], TreeIssues]:
    """Group node rows into trees (sorted by tree id); report orphans, missing / duplicate roots, duplicate ids.

    A tree with no root or several roots is dropped whole; a node whose parent is missing (and its subtree) is
    dropped; the rest of the tree is kept.
    """
    issues = TreeIssues()
    if nodes.height == 0:
        return [], issues
    nodes = with_tree_id(validate(nodes, NODES_SCHEMA, name="nodes"))
    cols = ["tree_id", *NODES_SCHEMA.keys()]
    trees: list[Tree] = []
    for (tree_id,), part in nodes.select(cols).group_by(["tree_id"], maintain_order=True):
        rows = part.to_dicts()
        problem_id = str(rows[0]["problem_id"])
        by_id: dict[str, Node] = {}
        for row in rows:
            n = _node(row)
            if n.node_id in by_id:
                issues.add(f"{tree_id}: duplicate node id {n.node_id!r} (kept the first)", nodes=1)
                continue
            by_id[n.node_id] = n
        roots = [n.node_id for n in by_id.values() if n.parent_id is None]
        if len(roots) != 1:
            issues.add(f"{tree_id}: {len(roots)} roots (expected 1); tree dropped", nodes=len(by_id), trees=1)
            continue
        children: dict[str, list[str]] = {}
        for n in by_id.values():
            if n.parent_id is not None:
                children.setdefault(n.parent_id, []).append(n.node_id)
        # Keep what is reachable from the root (drops orphans and anything under them, and breaks cycles).
        reachable: set[str] = set()
        stack = [roots[0]]
        while stack:
            cur = stack.pop()
            if cur in reachable:
                continue
            reachable.add(cur)
            stack.extend(children.get(cur, ()))
        if len(reachable) < len(by_id):
            lost = len(by_id) - len(reachable)
            issues.add(f"{tree_id}: {lost} nodes not reachable from the root (missing parent); dropped", nodes=lost)
            by_id = {k: v for k, v in by_id.items() if k in reachable}
        kids = {
            k: sorted((c for c in v if c in reachable), key=natural_key) for k, v in children.items() if k in reachable
        }
        trees.append(Tree(str(tree_id), problem_id, roots[0], by_id, kids))
    trees.sort(key=lambda t: t.tree_id)
    return trees, issues


# --------------------------------------------------------------------------------------------------------------------
# Reading tree shards from disk


@dataclass
class TreeData:
    """Node and problem rows merged from every Parquet file under one or more tree directories."""

    nodes: pl.DataFrame
    problems: pl.DataFrame
    node_files: list[str] = field(default_factory=list)
    problem_files: list[str] = field(default_factory=list)
    empty_files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)


def _synthesis_dirs(root: Path) -> list[Path]:
    """Directories below `root` (itself included) in the layout `rstar synthesize` writes: nodes/ + problems/ parts."""
    found = {p.parent for p in root.rglob("nodes") if p.is_dir() and (p.parent / "problems").is_dir()}
    if (root / "nodes").is_dir() and (root / "problems").is_dir():
        found.add(root)
    return sorted(found)


def _sources(dirs: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(synthesis directories, loose Parquet files outside them) under the given paths."""
    synth: list[Path] = []
    loose: list[Path] = []
    for d in dirs:
        p = Path(d)
        if p.is_file():
            loose.append(p)
        elif p.is_dir():
            sd = _synthesis_dirs(p)
            synth.extend(sd)
            loose.extend(f for f in sorted(p.rglob("*.parquet")) if not any(s in f.parents for s in sd))
        else:
            raise FileNotFoundError(f"tree directory not found: {p}")
    return synth, loose


def merge_problems(problems: pl.DataFrame) -> pl.DataFrame:
    """One row per problem: counts summed over shards, descriptive fields from the first shard, error only if no shard
    succeeded."""
    if problems.height == 0:
        return empty(PROBLEMS_SCHEMA)
    summed = ["rollouts", "correct_rollouts", "terminals", "nodes", "tokens_generated", "wall_time_s"]
    aggs: list[pl.Expr] = []
    for c, t in PROBLEMS_SCHEMA.items():
        if c == "problem_id":
            continue
        if c in summed:
            aggs.append(pl.col(c).sum().cast(t).alias(c))
        elif c == "solved":
            aggs.append(pl.col(c).any().alias(c))
        elif c == "error":
            aggs.append(pl.when(pl.col("error").is_null().any()).then(None).otherwise(pl.col("error").first()).alias(c))
        else:
            aggs.append(pl.col(c).drop_nulls().first().cast(t).alias(c))
    out = problems.group_by("problem_id", maintain_order=True).agg(aggs)
    return out.select(list(PROBLEMS_SCHEMA)).sort("problem_id")


def load_tree_dirs(dirs: Sequence[str | Path]) -> TreeData:
    """Read every node / problem table under `dirs` (files may be passed directly too).

    A directory in the layout `rstar synthesize` writes (`nodes/part-*.parquet` + `problems/part-*.parquet`) is read
    through `rstar.search.io.load_synthesis`, which keeps the latest attempt of each problem (resume-safe). Other
    Parquet files are classified by their columns: a node table has `node_id`, a problem table has `question`;
    anything else is skipped and reported, and empty tables are reported, not fatal. A problem found in several
    sources (a second shard with extra rollouts) gets one tree per source: `tree_id` = `problem_id#<source index>`.
    """
    data = TreeData(nodes=_empty_nodes_with_tree_id(), problems=empty(PROBLEMS_SCHEMA))
    node_frames: list[pl.DataFrame] = []
    problem_frames: list[pl.DataFrame] = []
    synth, loose = _sources(dirs)

    def add_nodes(df: pl.DataFrame, label: str) -> None:
        node_frames.append(df.select(list(NODES_SCHEMA)).with_columns(pl.lit(len(node_frames)).alias("_src")))
        data.node_files.append(label)

    for d in synth:
        from rstar.search.io import load_synthesis  # the engine's reader: latest attempt per problem

        try:
            nodes, problems = load_synthesis(d)
        except (SchemaError, OSError, pl.exceptions.PolarsError) as exc:
            data.skipped_files.append(f"{d}: unreadable synthesis directory ({type(exc).__name__}: {exc})")
            continue
        if nodes.height == 0 and problems.height == 0:
            data.empty_files.append(str(d))
            continue
        if nodes.height:
            add_nodes(nodes, str(d))
        if problems.height:
            problem_frames.append(problems.select(list(PROBLEMS_SCHEMA)))
            data.problem_files.append(str(d))
    for f in loose:
        try:
            df = pl.read_parquet(f)
        except Exception as exc:  # a truncated or foreign file must not kill the whole merge
            data.skipped_files.append(f"{f}: unreadable ({type(exc).__name__}: {exc})")
            continue
        kind = "nodes" if "node_id" in df.columns else "problems" if "question" in df.columns else None
        if kind is None:
            data.skipped_files.append(f"{f}: neither a node table nor a problem table")
            continue
        if df.height == 0:
            data.empty_files.append(str(f))
            continue
        try:
            df = validate(df, NODES_SCHEMA if kind == "nodes" else PROBLEMS_SCHEMA, name=str(f))
        except SchemaError as exc:
            data.skipped_files.append(str(exc))
            continue
        if kind == "nodes":
            add_nodes(df, str(f))
        else:
            problem_frames.append(df.select(list(PROBLEMS_SCHEMA)))
            data.problem_files.append(str(f))
    if node_frames:
        nodes = pl.concat(node_frames, how="vertical")
        sources = nodes.group_by("problem_id").agg(pl.col("_src").n_unique().alias("_nsrc"))
        nodes = nodes.join(sources, on="problem_id", how="left")
        data.nodes = nodes.with_columns(
            pl.when(pl.col("_nsrc") > 1)
            .then(pl.col("problem_id") + pl.lit("#") + pl.col("_src").cast(pl.Utf8))
            .otherwise(pl.col("problem_id"))
            .alias("tree_id")
        ).drop("_src", "_nsrc")
    if problem_frames:
        data.problems = merge_problems(pl.concat(problem_frames, how="vertical"))
    return data


def _empty_nodes_with_tree_id() -> pl.DataFrame:
    return empty(NODES_SCHEMA).with_columns(pl.lit(None, pl.Utf8).alias("tree_id"))


def questions(problems: pl.DataFrame) -> dict[str, str]:
    """problem_id -> question text."""
    if problems.height == 0:
        return {}
    return dict(zip(problems["problem_id"].to_list(), problems["question"].to_list(), strict=True))


def iter_by_problem(trees: Sequence[Tree]) -> Iterator[tuple[str, list[Tree]]]:
    """Trees grouped by problem id, problems in sorted order (trees of one problem in tree-id order)."""
    groups: dict[str, list[Tree]] = {}
    for t in trees:
        groups.setdefault(t.problem_id, []).append(t)
    for pid in sorted(groups):
        yield pid, sorted(groups[pid], key=lambda t: t.tree_id)


# --------------------------------------------------------------------------------------------------------------------
# Hand-built trees (tests, demos, fakes)


def nodes_frame(problem_id: str, spec: Mapping[str, Mapping[str, Any]], *, round_idx: int = 0) -> pl.DataFrame:
    """A NODES_SCHEMA frame from a compact spec, for tests and demos: `{node_id: {field: value, ...}}`.

    Node ids are dotted paths with the root "0" ("0.1" is its second child); `parent_id` and `depth` come from the id
    unless given. `outcome` ("correct", "wrong", "ungraded", "code_error", "max_depth", "unparsable") makes the node a
    terminal of that kind; `q` sets value_sum = q with one visit (None: never visited). A step's default text is
    unique per node: `# step <id>` plus a delimiter (answers end with a boxed answer block).
    """
    rows = []
    for order, (nid, fields) in enumerate(spec.items()):
        f = dict(fields)
        outcome = f.pop("outcome", None)
        parent = nid.rsplit(".", 1)[0] if "." in nid else None
        depth = nid.count(".")
        q = f.pop("q", 0.0 if parent is not None else None)
        if parent is None:
            text = ""
        elif outcome in ("correct", "wrong", "ungraded"):
            ans = "1" if outcome == "correct" else "2"
            text = (
                f"# step {nid}\nprint({ans})\n<end_of_code>\n<output>\n{ans}\n<end_of_output>\n"
                f"<answer>\nThe answer is \\boxed{{{ans}}}\n<end_of_answer>\n"
            )
        else:
            text = f"# step {nid}\nx_{depth} = {order}\n<end_of_step>\n"
        row: dict = {
            "problem_id": problem_id,
            "node_id": nid,
            "parent_id": parent,
            "depth": depth,
            "step_text": text,
            "code": None,
            "output": None,
            "exec_ok": None if parent is None else outcome != "code_error",
            "is_terminal": outcome is not None,
            "terminal_reason": {"correct": "answer", "wrong": "answer", "ungraded": "answer"}.get(outcome, outcome)
            if outcome
            else None,
            "answer": {"correct": "1", "wrong": "2", "ungraded": "3"}.get(outcome or ""),
            "correct": {"correct": True, "wrong": False}.get(outcome or ""),
            "reward": {"correct": 1.0, "wrong": -1.0, "code_error": -1.0}.get(outcome or ""),
            "visits": 0 if q is None else 1,
            "value_sum": 0.0 if q is None else float(q),
            "q": None if q is None else float(q),
            "ppm_score": None,
            "expansion_order": order,
            "tokens": 0,
            "round": round_idx,
            "policy_id": "test",
            "ppm_id": None,
        }
        row.update(f)
        rows.append(row)
    return pl.DataFrame(rows, schema=NODES_SCHEMA)


def problems_frame(questions_by_id: dict[str, str], **fields: object) -> pl.DataFrame:
    """A PROBLEMS_SCHEMA frame for hand-built trees: one row per (problem_id, question); `fields` fill every row."""
    rows = []
    for pid, q in questions_by_id.items():
        row = dict.fromkeys(PROBLEMS_SCHEMA)
        row.update({"problem_id": pid, "question": q, "gold": "1", "source": "test", "mode": "terminal"})
        row.update(fields)
        rows.append(row)
    return pl.DataFrame(rows, schema=PROBLEMS_SCHEMA)

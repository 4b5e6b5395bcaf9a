"""The search tree: nodes with the fields of `NODES_SCHEMA`, path helpers, back-propagation and row export.

A `Tree` owns a flat list of `Node`s (index 0 is the root); parents and children are list indices, so a tree is
cheap to build, walk and copy. Node ids are paths of child indices: the root is "0", its children "0.0", "0.1", ...,
a grandchild "0.1.2". Nothing here samples, executes or scores: `rstar.search.mcts` drives the tree.

    tree = Tree.new(problem)
    child = tree.add_child(0, step_text="...", code="x = 1", ...)
    tree.backup(child, +1.0)           # value added to the node and every ancestor, one visit each
    rows = tree.to_rows(round_idx=1, policy_id="fake:x", ppm_id=None)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from rstar.types import Problem
from rstar.verify.steps import PROMPT_TEMPLATE, build_prompt

TerminalReason = Literal["answer", "code_error", "max_depth", "unparsable"]
ROOT_ID = "0"


@dataclass(slots=True)
class Node:
    """One step of a trajectory (the root is the empty step at depth 0).

    `stdout` is the whole accumulated program's output (what the executor returned); `output` only what this step
    printed itself. `exhausted` marks an expanded node below which no selectable node is left (internal: selection
    skips it). `consecutive_errors` counts failing steps in a row ending here (code_errors='keep').
    """

    node_id: str
    parent: int | None
    depth: int
    step_text: str = ""
    code: str = ""
    output: str = ""
    stdout: str = ""
    exec_ok: bool | None = None
    is_terminal: bool = False
    terminal_reason: TerminalReason | None = None
    answer: str | None = None
    correct: bool | None = None
    reward: float | None = None
    visits: int = 0
    value_sum: float = 0.0
    ppm_score: float | None = None
    expansion_order: int = 0
    tokens: int = 0
    children: list[int] = field(default_factory=list)
    expanded: bool = False
    exhausted: bool = False
    consecutive_errors: int = 0

    @property
    def q(self) -> float | None:
        """Mean value, None when never visited."""
        return self.value_sum / self.visits if self.visits else None

    @property
    def selectable(self) -> bool:
        """Whether selection may descend into this node."""
        return not self.is_terminal and not self.exhausted


@dataclass
class Tree:
    """One problem's search tree."""

    problem: Problem
    nodes: list[Node]
    prompt: str
    expansions: list[int] = field(default_factory=list)  # node indices in the order they were expanded
    tokens_generated: int = 0  # every sampled candidate's tokens, dropped ones included

    @classmethod
    def new(cls, problem: Problem, template: str = PROMPT_TEMPLATE) -> Tree:
        return cls(
            problem=problem,
            nodes=[Node(node_id=ROOT_ID, parent=None, depth=0)],
            prompt=build_prompt(problem.question, template),
        )

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def __len__(self) -> int:
        return len(self.nodes)

    def by_id(self) -> dict[str, Node]:
        return {n.node_id: n for n in self.nodes}

    def add_child(self, parent: int, **fields: Any) -> int:
        """Append a child of `parent` (its id is the parent's id plus its child index) and return its index."""
        p = self.nodes[parent]
        idx = len(self.nodes)
        node = Node(
            node_id=f"{p.node_id}.{len(p.children)}",
            parent=parent,
            depth=p.depth + 1,
            expansion_order=idx,
            **fields,
        )
        self.nodes.append(node)
        p.children.append(idx)
        return idx

    def path(self, idx: int) -> list[int]:
        """Indices from the first step down to `idx` (the root excluded)."""
        out: list[int] = []
        i: int | None = idx
        while i is not None and i != 0:
            out.append(i)
            i = self.nodes[i].parent
        out.reverse()
        return out

    def ancestors(self, idx: int) -> Iterator[int]:
        """`idx` and every node above it, up to and including the root."""
        i: int | None = idx
        while i is not None:
            yield i
            i = self.nodes[i].parent

    def prefix(self, idx: int) -> str:
        """The prompt plus every step text down to and including `idx`: the policy's input when expanding `idx`
        and the PPM's input when scoring it."""
        return self.prompt + "".join(self.nodes[i].step_text for i in self.path(idx))

    def program_parts(self, idx: int) -> list[str]:
        """The code of every step on the path to `idx` that ran (failed steps kept under code_errors='keep' are
        left out, so a later step can recover from an earlier error)."""
        return [self.nodes[i].code for i in self.path(idx) if self.nodes[i].exec_ok is not False]

    def backup(self, idx: int, value: float) -> None:
        """Back-propagate `value` from `idx` to the root: one visit and `value` added to each node on the way."""
        for i in self.ancestors(idx):
            n = self.nodes[i]
            n.visits += 1
            n.value_sum += value

    def mark_exhausted_upward(self, idx: int) -> None:
        """Mark `idx` exhausted if it was expanded and no child is selectable, then re-check its ancestors."""
        i: int | None = idx
        while i is not None:
            n = self.nodes[i]
            if n.exhausted or not n.expanded or any(self.nodes[c].selectable for c in n.children):
                return
            n.exhausted = True
            i = n.parent

    # ----------------------------------------------------------------------------------------------------------------
    # Summaries and export

    def answer_terminals(self) -> list[Node]:
        return [n for n in self.nodes if n.terminal_reason == "answer"]

    @property
    def solved(self) -> bool:
        return any(n.correct for n in self.nodes if n.terminal_reason == "answer")

    def to_rows(self, *, round_idx: int, policy_id: str, ppm_id: str | None) -> list[dict[str, Any]]:
        """One dict per node with exactly the columns of `NODES_SCHEMA`, in creation order."""
        pid = self.problem.id
        rows = []
        for n in self.nodes:
            rows.append(
                {
                    "problem_id": pid,
                    "node_id": n.node_id,
                    "parent_id": None if n.parent is None else self.nodes[n.parent].node_id,
                    "depth": n.depth,
                    "step_text": n.step_text,
                    "code": n.code,
                    "output": n.output,
                    "exec_ok": n.exec_ok,
                    "is_terminal": n.is_terminal,
                    "terminal_reason": n.terminal_reason,
                    "answer": n.answer,
                    "correct": n.correct,
                    "reward": n.reward,
                    "visits": n.visits,
                    "value_sum": n.value_sum,
                    "q": n.q,
                    "ppm_score": n.ppm_score,
                    "expansion_order": n.expansion_order,
                    "tokens": n.tokens,
                    "round": round_idx,
                    "policy_id": policy_id,
                    "ppm_id": ppm_id,
                }
            )
        return rows

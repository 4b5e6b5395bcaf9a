"""UCT selection: which child a rollout descends into.

    score(child) = Q(child) + c * sqrt(ln N(parent) / N(child))

with c = 2 by default and no prior (the paper's and the reference's choice). Terminal children and exhausted
subtrees (nothing selectable below) are never selected. Never-visited children either come first, in creation order
(`unvisited="first"`, the default: every candidate gets looked at once before any is revisited), or score 0
(`unvisited="zero"`, what the reference does: a visited child with a good Q can then shadow its unvisited siblings).
Ties go to the earliest child. `ln N(parent)` uses max(N, 1) so a parent not yet visited (the root before the first
back-up, in PPM modes) selects by Q alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rstar.search.tree import Node


def uct_score(q: float, n_parent: int, n_child: int, c: float) -> float:
    """UCT value of a visited child (`n_child >= 1`)."""
    return q + c * math.sqrt(math.log(max(n_parent, 1)) / n_child)


def select_child(nodes: Sequence[Node], parent: Node, c: float, unvisited: str = "first") -> int | None:
    """Index (into `nodes`) of the child of `parent` to descend into, or None when no child is selectable."""
    best: int | None = None
    best_score = -math.inf
    log_n = math.log(max(parent.visits, 1))
    for ci in parent.children:
        ch = nodes[ci]
        if ch.is_terminal or ch.exhausted:
            continue
        if ch.visits == 0:
            if unvisited == "first":
                return ci
            score = 0.0
        else:
            score = ch.value_sum / ch.visits + c * math.sqrt(log_n / ch.visits)
        if score > best_score:
            best, best_score = ci, score
    return best

"""UCT selection: a hand-computed example, the unvisited-child options, and what is never selected."""

from __future__ import annotations

import math

import pytest

from rstar.search.tree import Node
from rstar.search.uct import select_child, uct_score


def _family(children: list[tuple[int, float]], parent_visits: int) -> tuple[list[Node], Node]:
    """nodes[0] is the parent; then one child per (visits, value_sum)."""
    parent = Node(node_id="0", parent=None, depth=0, visits=parent_visits, expanded=True)
    nodes = [parent]
    for i, (visits, value) in enumerate(children):
        nodes.append(Node(node_id=f"0.{i}", parent=0, depth=1, visits=visits, value_sum=value))
        parent.children.append(i + 1)
    return nodes, parent


def test_hand_computed_uct_example() -> None:
    # N = 10. Child A: 3 visits, value 1.5 -> Q 0.5;  B: 5 visits, value 4 -> Q 0.8;  C: 2 visits, value -1 -> Q -0.5.
    # UCT(A) = 0.5 + 2*sqrt(ln 10 / 3) = 0.5 + 2*0.876087 = 2.252174
    # UCT(B) = 0.8 + 2*sqrt(ln 10 / 5) = 0.8 + 2*0.678614 = 2.157228
    # UCT(C) = -0.5 + 2*sqrt(ln 10 / 2) = -0.5 + 2*1.072983 = 1.645966
    assert uct_score(0.5, 10, 3, 2.0) == pytest.approx(2.252174, abs=1e-6)
    assert uct_score(0.8, 10, 5, 2.0) == pytest.approx(2.157228, abs=1e-6)
    assert uct_score(-0.5, 10, 2, 2.0) == pytest.approx(1.645966, abs=1e-6)
    nodes, parent = _family([(3, 1.5), (5, 4.0), (2, -1.0)], parent_visits=10)
    assert select_child(nodes, parent, 2.0) == 1
    # With less exploration the higher Q wins: c = 0.5 -> A 0.938, B 1.139, C 0.036.
    assert select_child(nodes, parent, 0.5) == 2
    # c = 0: pure exploitation.
    assert select_child(nodes, parent, 0.0) == 2


def test_terminal_and_exhausted_children_are_skipped() -> None:
    nodes, parent = _family([(3, 1.5), (5, 4.0), (2, -1.0)], parent_visits=10)
    nodes[1].is_terminal = True
    assert select_child(nodes, parent, 2.0) == 2
    nodes[2].exhausted = True
    assert select_child(nodes, parent, 2.0) == 3
    nodes[3].is_terminal = True
    assert select_child(nodes, parent, 2.0) is None


def test_unvisited_first_picks_the_earliest_unvisited_child() -> None:
    nodes, parent = _family([(3, 3.0), (0, 0.0), (0, 0.0)], parent_visits=3)
    assert select_child(nodes, parent, 2.0, "first") == 2


def test_unvisited_zero_follows_the_reference() -> None:
    # Visited child: Q = 1, UCT = 1 + 2*sqrt(ln 3 / 3) > 0 beats the unvisited ones, which score 0.
    nodes, parent = _family([(3, 3.0), (0, 0.0), (0, 0.0)], parent_visits=3)
    assert select_child(nodes, parent, 2.0, "zero") == 1
    # A bad visited child (UCT -1 + 0.5*sqrt(ln 2 / 2) = -0.706 < 0) loses to the first unvisited one (ties: first).
    nodes, parent = _family([(2, -2.0), (0, 0.0), (0, 0.0)], parent_visits=2)
    assert -1 + 0.5 * math.sqrt(math.log(2) / 2) < 0
    assert select_child(nodes, parent, 0.5, "zero") == 2


def test_ties_go_to_the_first_child() -> None:
    nodes, parent = _family([(2, 1.0), (2, 1.0), (2, 1.0)], parent_visits=6)
    assert select_child(nodes, parent, 2.0) == 1


def test_unvisited_parent_selects_by_q_alone() -> None:
    # PPM modes: children start with one visit each while the root has none; ln(max(N, 1)) = 0, so the best PPM wins.
    nodes, parent = _family([(1, -0.5), (1, 0.6), (1, 0.2)], parent_visits=0)
    assert select_child(nodes, parent, 2.0) == 2

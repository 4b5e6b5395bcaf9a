"""Build the process preference model's training pairs from search trees.

rStar-Math's PPM does not regress the noisy per-step Q-values; it learns to *prefer* a step that leads to a correct
answer over one from the same prefix that leads to a wrong answer (pairwise Bradley-Terry loss). Two kinds of pairs:

- **step pairs** (`kind="step"`): at every node whose subtree reaches both a correct and a wrong answer, the children
  that reach a correct answer are chosen candidates (highest Q first), the children that reach a wrong answer are
  rejected candidates (lowest Q first). Up to `top_n` (2) of each are taken; when a side has a single candidate the
  other side takes up to `single_n` (4), as the reference does. Each chosen x rejected combination is a pair with the
  node's text as the shared prefix and the two children's step texts as chosen / rejected.
- **final pairs** (`kind="final"`, the paper's final-step pairs, which the reference never implemented): per problem,
  the best correct whole trajectories (by average Q, ties by minimum Q, as for SFT; those with failing code dropped)
  against the worst wrong ones (lowest average Q first), with the same `top_n` / `single_n` rule. The prefix is the
  deepest node the two trajectories share (the prompt when they come from different trees); chosen / rejected are the
  rest of each trajectory.

Code-error, max-depth and unparsable leaves are not wrong answers: they never make a node "mixed" or a child a
rejected candidate. Sibling ties in Q break by node id in natural order, so the output is deterministic.

Filters: a combination of a node with itself, or of two identical texts, is never a pair; with `margin` set (the
default 0.0), a pair is kept only when `q_chosen > q_rejected` and `q_chosen - q_rejected >= margin` (the reference
uses 0.5 for its final data); `margin=None` keeps every combination. A final pair identical to a step pair is skipped.

Each pair carries `weight = 1 / (pos_count * neg_count)` (the reference's loss weight: every node contributes about
one unit however many pairs it yields).

    pairs = build_pairs(nodes, problems, margin=0.0)     # PAIRS_SCHEMA frame
    pairs, stats = pairs_from_trees(trees, problems, PairConfig(margin=0.5))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import polars as pl

from rstar.data.schema import PAIRS_SCHEMA, PROBLEMS_SCHEMA, validate
from rstar.data.sft import rank_key
from rstar.data.trees import Trajectory, Tree, build_trees, iter_by_problem, natural_key, questions
from rstar.verify.steps import build_prompt


@dataclass(frozen=True)
class PairConfig:
    """Which pairs to build and how to filter them."""

    top_n: int = 2  # chosen / rejected candidates per node (and per problem for final pairs)
    single_n: int = 4  # when one side has a single candidate, the other side takes up to this many
    margin: float | None = 0.0  # None: no filter; else keep q_chosen > q_rejected and q_chosen - q_rejected >= margin
    step_pairs: bool = True
    final_pairs: bool = True
    drop_exec_errors: bool = True  # final pairs: skip correct trajectories with failing code (as SFT does)

    def __post_init__(self) -> None:
        if self.top_n < 1 or self.single_n < 1:
            raise ValueError("PairConfig.top_n and single_n must be >= 1")
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"PairConfig.margin must be >= 0 or None, got {self.margin}")


@dataclass
class PairStats:
    """Counts of what was built and what each filter removed."""

    problems: int = 0
    problems_with_pairs: int = 0
    mixed_nodes: int = 0  # nodes whose subtree reaches both a correct and a wrong answer
    step_pairs: int = 0
    final_pairs: int = 0
    filtered_margin: int = 0
    skipped_same: int = 0  # a candidate paired with itself, or two identical texts
    skipped_duplicate_final: int = 0
    missing_question: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def select_sides(n_chosen: int, n_rejected: int, cfg: PairConfig) -> tuple[int, int]:
    """How many chosen / rejected candidates to take, given how many each side has."""
    if n_chosen == 0 or n_rejected == 0:
        return 0, 0
    if n_chosen == 1:
        return 1, min(n_rejected, cfg.single_n)
    if n_rejected == 1:
        return min(n_chosen, cfg.single_n), 1
    return min(n_chosen, cfg.top_n), min(n_rejected, cfg.top_n)


def _keep(q_c: float, q_r: float, cfg: PairConfig) -> bool:
    return cfg.margin is None or (q_c > q_r and q_c - q_r >= cfg.margin)


def _step_pairs(tree: Tree, question: str, cfg: PairConfig, stats: PairStats, template: str | None) -> list[dict]:
    rows: list[dict] = []
    order = sorted(tree.nodes, key=lambda i: (tree.nodes[i].depth, natural_key(i)))
    for nid in order:
        good, bad = tree.flags(nid)
        if not (good and bad):
            continue
        stats.mixed_nodes += 1
        kids = tree.children.get(nid, [])
        pos = sorted((c for c in kids if tree.flags(c)[0]), key=lambda c: (-tree.nodes[c].qv, natural_key(c)))
        neg = sorted((c for c in kids if tree.flags(c)[1]), key=lambda c: (tree.nodes[c].qv, natural_key(c)))
        n_pos, n_neg = select_sides(len(pos), len(neg), cfg)
        if not n_pos:
            continue
        prefix: str | None = None
        for c in pos[:n_pos]:
            for r in neg[:n_neg]:
                cn, rn = tree.nodes[c], tree.nodes[r]
                if c == r or cn.step_text == rn.step_text:
                    stats.skipped_same += 1
                    continue
                if not _keep(cn.qv, rn.qv, cfg):
                    stats.filtered_margin += 1
                    continue
                if prefix is None:
                    prefix = tree.prefix(question, nid, template)
                rows.append(
                    {
                        "problem_id": tree.problem_id,
                        "tree_id": tree.tree_id,
                        "kind": "step",
                        "node_id": nid,
                        "depth": cn.depth,
                        "prefix": prefix,
                        "chosen": cn.step_text,
                        "rejected": rn.step_text,
                        "chosen_id": c,
                        "rejected_id": r,
                        "q_chosen": cn.qv,
                        "q_rejected": rn.qv,
                        "pos_count": n_pos,
                        "neg_count": n_neg,
                        "weight": 1.0 / (n_pos * n_neg),
                    }
                )
    stats.step_pairs += len(rows)
    return rows


def _common_prefix_len(a: Sequence[str], b: Sequence[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _final_pairs(
    group: Sequence[Tree],
    question: str,
    cfg: PairConfig,
    stats: PairStats,
    template: str | None,
    seen: set[tuple[str, str, str]],
) -> list[dict]:
    trajs = [t for tree in group for t in tree.trajectories()]
    correct = [t for t in trajs if t.outcome == "correct" and not (cfg.drop_exec_errors and t.has_exec_error)]
    wrong = [t for t in trajs if t.outcome == "wrong"]
    pos = sorted(correct, key=rank_key)
    neg = sorted(wrong, key=lambda t: (t.avg_q, t.min_q, t.num_steps, t.tree_id, natural_key(t.leaf_id)))
    n_pos, n_neg = select_sides(len(pos), len(neg), cfg)
    trees = {t.tree_id: t for t in group}
    prompt = build_prompt(question) if template is None else build_prompt(question, template)
    rows: list[dict] = []
    for c in pos[:n_pos]:
        for r in neg[:n_neg]:
            if not _keep(c.avg_q, r.avg_q, cfg):
                stats.filtered_margin += 1
                continue
            row = _final_row(c, r, trees, question, prompt, n_pos, n_neg, template)
            if row["chosen"] == row["rejected"]:
                stats.skipped_same += 1
                continue
            key = (row["prefix"], row["chosen"], row["rejected"])
            if key in seen:
                stats.skipped_duplicate_final += 1
                continue
            seen.add(key)
            rows.append(row)
    stats.final_pairs += len(rows)
    return rows


def _final_row(
    c: Trajectory,
    r: Trajectory,
    trees: dict[str, Tree],
    question: str,
    prompt: str,
    n_pos: int,
    n_neg: int,
    template: str | None,
) -> dict:
    if c.tree_id == r.tree_id:
        shared = _common_prefix_len(c.node_ids, r.node_ids)
        tree = trees[c.tree_id]
        lca = c.node_ids[shared - 1] if shared else tree.root
        node_id: str | None = lca
        prefix = tree.prefix(question, lca, template) if shared else prompt
    else:  # different trees of one problem share only the prompt
        shared, node_id, prefix = 0, None, prompt
    return {
        "problem_id": c.problem_id,
        "tree_id": c.tree_id,
        "kind": "final",
        "node_id": node_id,
        "depth": shared + 1,
        "prefix": prefix,
        "chosen": "".join(c.step_texts[shared:]),
        "rejected": "".join(r.step_texts[shared:]),
        "chosen_id": c.leaf_id,
        "rejected_id": r.leaf_id,
        "q_chosen": c.avg_q,
        "q_rejected": r.avg_q,
        "pos_count": n_pos,
        "neg_count": n_neg,
        "weight": 1.0 / (n_pos * n_neg),
    }


def pairs_from_trees(
    trees: Sequence[Tree],
    problems: pl.DataFrame,
    config: PairConfig | None = None,
    *,
    template: str | None = None,
) -> tuple[pl.DataFrame, PairStats]:
    """Preference pairs (PAIRS_SCHEMA) and statistics for already-built trees.

    Order: problems sorted by id; within a problem, step pairs tree by tree, nodes by (depth, natural id), chosen rank
    then rejected rank; then final pairs by chosen rank then rejected rank.
    """
    cfg = config or PairConfig()
    problems = validate(problems, PROBLEMS_SCHEMA, name="problems")
    qs = questions(problems)
    stats = PairStats()
    rows: list[dict] = []
    for pid, group in iter_by_problem(trees):
        stats.problems += 1
        if pid not in qs:
            stats.missing_question += 1
            continue
        before = len(rows)
        step_rows: list[dict] = []
        if cfg.step_pairs:
            for tree in group:
                step_rows.extend(_step_pairs(tree, qs[pid], cfg, stats, template))
        rows.extend(step_rows)
        if cfg.final_pairs:
            seen = {(x["prefix"], x["chosen"], x["rejected"]) for x in step_rows}
            rows.extend(_final_pairs(group, qs[pid], cfg, stats, template, seen))
        if len(rows) > before:
            stats.problems_with_pairs += 1
    return pl.DataFrame(rows, schema=PAIRS_SCHEMA), stats


def build_pairs(
    nodes: pl.DataFrame,
    problems: pl.DataFrame,
    *,
    top_n: int = 2,
    single_n: int = 4,
    margin: float | None = 0.0,
    step_pairs: bool = True,
    final_pairs: bool = True,
    template: str | None = None,
) -> pl.DataFrame:
    """Step and final-step preference pairs for every problem (PAIRS_SCHEMA); see the module docstring."""
    trees, _ = build_trees(nodes)
    cfg = PairConfig(top_n=top_n, single_n=single_n, margin=margin, step_pairs=step_pairs, final_pairs=final_pairs)
    df, _ = pairs_from_trees(trees, problems, cfg, template=template)
    return df

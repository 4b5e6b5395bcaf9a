"""Aggregate search trees into per-problem and per-depth statistics, and decide which problems need more rollouts.

Pure polars over the node and problem tables (`rstar.data.schema`), so it runs on millions of nodes in seconds:

    agg = aggregate(nodes, problems)                 # nodes may come from several shards (see trees.load_tree_dirs)
    agg.problems        # PROBLEM_STATS_SCHEMA: outcome counts, solve rate, difficulty, extra rollouts per problem
    agg.depths          # Q statistics of the steps at each depth
    agg.rerun           # the problems that need more rollouts next round, how many and why

Outcomes follow the reference: an answer terminal is correct or wrong against the gold answer; code-error,
max-depth and unparsable terminals are not *wrong answers* (they are counted apart). Difficulty, as in the paper's
round schedule: easy = every graded answer correct, medium = some correct, hard = none correct; `ungraded` = only
answers without gold; `failed` = the search produced no terminal (it errored or wrote no nodes). Hard problems get
extra rollouts next round (paper: +16), problems with fewer correct trajectories than the SFT needs get a few more,
failed ones a full re-run.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rstar.data.schema import NODES_SCHEMA, PROBLEM_STATS_SCHEMA, PROBLEMS_SCHEMA, empty, validate
from rstar.data.trees import with_tree_id


@dataclass(frozen=True)
class AggregateConfig:
    """How many rollouts each kind of problem gets added next round."""

    extra_rollouts_hard: int = 16  # paper: hard (all wrong) problems get +16 rollouts
    min_correct: int = 2  # a solved problem with fewer correct terminals than this gets `extra_rollouts_few`
    extra_rollouts_few: int = 8
    rollouts_failed: int = 16  # a problem whose search failed or wrote no nodes is re-run with this many

    def __post_init__(self) -> None:
        for name in ("extra_rollouts_hard", "min_correct", "extra_rollouts_few", "rollouts_failed"):
            if getattr(self, name) < 0:
                raise ValueError(f"AggregateConfig.{name} must be >= 0")


@dataclass(frozen=True)
class Aggregate:
    problems: pl.DataFrame  # PROBLEM_STATS_SCHEMA
    depths: pl.DataFrame  # DEPTH_STATS columns
    rerun: pl.DataFrame  # problem_id, extra_rollouts, rerun_reason (only the problems that need more)
    steps: pl.DataFrame  # problem_id, tree_id, node_id, depth, q, outcome flags: one row per non-root node


DEPTH_STATS_SCHEMA: dict[str, pl.DataType] = {
    "depth": pl.Int32(),
    "nodes": pl.Int32(),
    "visited": pl.Int32(),
    "q_mean": pl.Float64(),
    "q_std": pl.Float64(),
    "q_min": pl.Float64(),
    "q_p10": pl.Float64(),
    "q_median": pl.Float64(),
    "q_p90": pl.Float64(),
    "q_max": pl.Float64(),
    "terminals": pl.Int32(),
    "code_errors": pl.Int32(),
    "exec_errors": pl.Int32(),
}


def node_outcomes(nodes: pl.DataFrame) -> pl.DataFrame:
    """The node table with boolean outcome columns: is_answer, is_correct, is_wrong, is_code_error, is_other."""
    is_answer = pl.col("is_terminal").fill_null(False) & (
        (pl.col("terminal_reason") == "answer").fill_null(False)
        | (pl.col("terminal_reason").is_null() & pl.col("answer").is_not_null())
    )
    return nodes.with_columns(
        is_answer.alias("is_answer"),
        (is_answer & pl.col("correct").fill_null(False)).alias("is_correct"),
        (is_answer & ~pl.col("correct").fill_null(True)).alias("is_wrong"),
        (pl.col("is_terminal").fill_null(False) & (pl.col("terminal_reason") == "code_error").fill_null(False)).alias(
            "is_code_error"
        ),
    ).with_columns(
        (
            pl.col("is_terminal").fill_null(False)
            & ~pl.col("is_correct")
            & ~pl.col("is_wrong")
            & ~pl.col("is_code_error")
        ).alias("is_other")
    )


def aggregate(
    nodes: pl.DataFrame, problems: pl.DataFrame | None = None, config: AggregateConfig | None = None
) -> Aggregate:
    """Per-problem outcome statistics, per-depth Q statistics and the re-run list, merged over every tree given.

    `problems` (PROBLEMS_SCHEMA, optional) adds source / level and problems that have no nodes at all (their search
    failed): those are reported as `failed` and scheduled for a full re-run.
    """
    cfg = config or AggregateConfig()
    nodes = with_tree_id(validate(nodes, NODES_SCHEMA, name="nodes")) if nodes.height else _empty_nodes()
    problems = validate(problems, PROBLEMS_SCHEMA, name="problems") if problems is not None else empty(PROBLEMS_SCHEMA)
    n = node_outcomes(nodes)
    i32 = pl.Int32()

    per = n.group_by("problem_id").agg(
        pl.col("tree_id").n_unique().cast(i32).alias("trees"),
        pl.len().cast(i32).alias("nodes"),
        pl.col("is_terminal").fill_null(False).sum().cast(i32).alias("terminals"),
        pl.col("is_answer").sum().cast(i32).alias("answers"),
        pl.col("is_correct").sum().cast(i32).alias("correct"),
        pl.col("is_wrong").sum().cast(i32).alias("wrong"),
        pl.col("is_code_error").sum().cast(i32).alias("code_errors"),
        pl.col("is_other").sum().cast(i32).alias("other_terminals"),
        pl.col("depth").filter(pl.col("is_terminal").fill_null(False)).mean().cast(pl.Float64).alias("avg_steps"),
        pl.col("q").filter(pl.col("parent_id").is_not_null()).max().alias("max_q"),
    )
    meta = problems.select("problem_id", "source", "level", pl.col("error").is_not_null().alias("_errored")).unique(
        "problem_id", keep="first"
    )
    ids = pl.concat([per.select("problem_id"), meta.select("problem_id")]).unique()
    out = ids.join(per, on="problem_id", how="left").join(meta, on="problem_id", how="left")
    counts = ["trees", "nodes", "terminals", "answers", "correct", "wrong", "code_errors", "other_terminals"]
    out = out.with_columns([pl.col(c).fill_null(0).cast(i32) for c in counts]).with_columns(
        pl.col("_errored").fill_null(False)
    )
    difficulty = (
        pl.when(pl.col("terminals") == 0)
        .then(pl.lit("failed"))
        .when((pl.col("correct") > 0) & (pl.col("wrong") == 0))
        .then(pl.lit("easy"))
        .when(pl.col("correct") > 0)
        .then(pl.lit("medium"))
        .when((pl.col("answers") > 0) & (pl.col("wrong") == 0))
        .then(pl.lit("ungraded"))
        .otherwise(pl.lit("hard"))
    )
    out = out.with_columns(
        pl.when(pl.col("terminals") > 0)
        .then(pl.col("correct") / pl.col("terminals"))
        .otherwise(None)
        .cast(pl.Float64)
        .alias("solve_rate"),
        difficulty.alias("difficulty"),
    )
    reason = (
        pl.when((pl.col("difficulty") == "failed") & (pl.col("nodes") == 0) & ~pl.col("_errored"))
        .then(pl.lit("missing"))
        .when(pl.col("difficulty") == "failed")
        .then(pl.lit("failed"))
        .when(pl.col("difficulty") == "hard")
        .then(pl.lit("hard"))
        .when((pl.col("correct") > 0) & (pl.col("correct") < cfg.min_correct))
        .then(pl.lit("few_correct"))
        .otherwise(None)
    )
    out = out.with_columns(reason.alias("rerun_reason")).with_columns(
        pl.when(pl.col("rerun_reason").is_in(["failed", "missing"]))
        .then(cfg.rollouts_failed)
        .when(pl.col("rerun_reason") == "hard")
        .then(cfg.extra_rollouts_hard)
        .when(pl.col("rerun_reason") == "few_correct")
        .then(cfg.extra_rollouts_few)
        .otherwise(0)
        .cast(i32)
        .alias("extra_rollouts")
    )
    stats = out.select([pl.col(c).cast(t) for c, t in PROBLEM_STATS_SCHEMA.items()]).sort("problem_id")
    rerun = stats.filter(pl.col("extra_rollouts") > 0).select("problem_id", "extra_rollouts", "rerun_reason")

    steps = n.filter(pl.col("parent_id").is_not_null()).select(
        "problem_id",
        "tree_id",
        "node_id",
        "depth",
        "q",
        "visits",
        "exec_ok",
        "is_terminal",
        "is_correct",
        "is_wrong",
        "is_code_error",
    )
    return Aggregate(problems=stats, depths=depth_stats(steps), rerun=rerun, steps=steps)


def depth_stats(steps: pl.DataFrame) -> pl.DataFrame:
    """Q statistics of the (non-root) nodes at each depth; never-visited nodes count in `nodes`, not in the Q stats."""
    if steps.height == 0:
        return empty(DEPTH_STATS_SCHEMA)
    q = pl.col("q").drop_nulls()
    i32 = pl.Int32()
    out = (
        steps.group_by("depth")
        .agg(
            pl.len().cast(i32).alias("nodes"),
            pl.col("q").is_not_null().sum().cast(i32).alias("visited"),
            q.mean().alias("q_mean"),
            q.std().alias("q_std"),
            q.min().alias("q_min"),
            q.quantile(0.1, "linear").alias("q_p10"),
            q.median().alias("q_median"),
            q.quantile(0.9, "linear").alias("q_p90"),
            q.max().alias("q_max"),
            pl.col("is_terminal").fill_null(False).sum().cast(i32).alias("terminals"),
            pl.col("is_code_error").sum().cast(i32).alias("code_errors"),
            (~pl.col("exec_ok")).fill_null(False).sum().cast(i32).alias("exec_errors"),
        )
        .sort("depth")
    )
    return out.select([pl.col(c).cast(t) for c, t in DEPTH_STATS_SCHEMA.items()])


def _empty_nodes() -> pl.DataFrame:
    return empty(NODES_SCHEMA).with_columns(pl.lit(None, pl.Utf8).alias("tree_id"))

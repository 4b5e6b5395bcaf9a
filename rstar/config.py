"""Frozen configuration dataclasses with per-field help; validation happens at construction.

    cfg = SearchConfig()                                  # the defaults (docs/search.md)
    cfg = SearchConfig.for_round(3, rollouts=32)          # the paper's round-3 settings with one override
    cfg = dataclasses.replace(cfg, seed=7)                # configs are values: copy with changes

Every field carries `metadata={"help": ...}` so CLIs and flow parameter forms can show it (`field_help(SearchConfig)`).
A config that makes no sense (unknown mode, zero candidates, ...) raises `ValueError` when it is built, not halfway
through a shard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

SearchMode = Literal["terminal", "ppm", "eval"]
UnvisitedPolicy = Literal["first", "zero"]
CodeErrorPolicy = Literal["drop", "keep"]
UnparsablePolicy = Literal["drop", "keep"]

SEARCH_MODES: tuple[str, ...] = ("terminal", "ppm", "eval")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SearchConfig:
    """How the MCTS over code-augmented steps runs (docs/search.md explains each choice against the paper)."""

    mode: SearchMode = field(
        default="terminal",
        metadata=_help(
            "How nodes get values. 'terminal' (paper rounds 1-2): answer terminals +1/-1 by gold, back-propagated. "
            "'ppm' (rounds 3+): as 'terminal', and every new non-terminal node starts with its PPM score as Q "
            "(one visit). 'eval' (no gold): as 'ppm', but answer terminals are scored by the PPM."
        ),
    )
    rollouts: int = field(default=16, metadata=_help("Rollouts per problem (paper: 8 in round 1, 16 after)."))
    extra_rollouts_if_unsolved: int = field(
        default=0,
        metadata=_help("More rollouts for a problem with no correct answer after its budget (needs gold; 0 = off)."),
    )
    candidates: int = field(
        default=8, metadata=_help("Candidate next steps sampled per expansion (paper 8, reference 12).")
    )
    max_depth: int = field(
        default=16, metadata=_help("Most steps in a trajectory; a non-answer step at this depth ends it.")
    )
    c_uct: float = field(default=2.0, metadata=_help("Exploration constant c in Q + c*sqrt(ln N_parent / N_child)."))
    unvisited: UnvisitedPolicy = field(
        default="first",
        metadata=_help(
            "How selection treats never-visited children: 'first' picks them before any visited sibling (in "
            "creation order); 'zero' scores them 0 like the reference (first child wins ties)."
        ),
    )
    temperature: float = field(default=0.7, metadata=_help("Sampling temperature (reference: 1.0 after round 1)."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling threshold."))
    max_step_tokens: int = field(default=512, metadata=_help("Token limit for one step (one completion)."))
    code_errors: CodeErrorPolicy = field(
        default="drop",
        metadata=_help(
            "Candidates whose accumulated code fails: 'drop' them (paper: only executable steps are kept) or "
            "'keep' them as nodes (reference): terminal with -1 once `error_threshold` consecutive steps failed."
        ),
    )
    error_threshold: int = field(
        default=1,
        metadata=_help("With code_errors='keep': consecutive failing steps that end a trajectory (1 = the first)."),
    )
    unparsable: UnparsablePolicy = field(
        default="drop",
        metadata=_help(
            "Candidates with no usable step (token limit mid-step, no delimiter, final code that prints nothing): "
            "'drop' them or 'keep' them as terminal nodes with -1."
        ),
    )
    max_active_trees: int = field(
        default=64, metadata=_help("Trees in flight at once; their pending expansions share one policy call.")
    )
    seed: int = field(default=0, metadata=_help("Root seed; each expansion's seed derives from (seed, problem, node)."))
    abort_after_errors: int = field(
        default=32,
        metadata=_help(
            "Abort the shard when this many problems in a row fail (a dead model server or sandbox, not one bad "
            "problem); 0 = never abort. Isolated per-problem failures are recorded and the shard goes on."
        ),
    )

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"SearchConfig.mode must be one of {SEARCH_MODES}, got {self.mode!r}")
        for name in ("rollouts", "candidates", "max_depth", "max_step_tokens", "max_active_trees", "error_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SearchConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("extra_rollouts_if_unsolved", "abort_after_errors"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SearchConfig.{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"SearchConfig.seed must be an integer, got {self.seed!r}")
        if not self.c_uct >= 0:
            raise ValueError(f"SearchConfig.c_uct must be >= 0, got {self.c_uct!r}")
        if self.unvisited not in ("first", "zero"):
            raise ValueError(f"SearchConfig.unvisited must be 'first' or 'zero', got {self.unvisited!r}")
        if self.code_errors not in ("drop", "keep"):
            raise ValueError(f"SearchConfig.code_errors must be 'drop' or 'keep', got {self.code_errors!r}")
        if self.unparsable not in ("drop", "keep"):
            raise ValueError(f"SearchConfig.unparsable must be 'drop' or 'keep', got {self.unparsable!r}")
        if not self.temperature >= 0:
            raise ValueError(f"SearchConfig.temperature must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SearchConfig.top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def uses_ppm(self) -> bool:
        """Whether this mode needs a reward model."""
        return self.mode in ("ppm", "eval")

    @property
    def needs_gold(self) -> bool:
        """Whether this mode grades terminals against a gold answer (and so cannot run without one)."""
        return self.mode in ("terminal", "ppm")

    @classmethod
    def for_round(cls, round_idx: int, **overrides: Any) -> SearchConfig:
        """The paper's settings for self-evolution round `round_idx` (1-based, as in the paper), plus overrides.

        Round 1 (bootstrap): terminal-guided, 8 rollouts, temperature 0.7. Round 2: terminal-guided, 16 rollouts.
        Rounds 3+: PPM-augmented, 16 rollouts. Rounds 2+ sample at temperature 1.0 like the reference's SFT-policy
        configs. Every round gives a problem still unsolved after its budget 16 more rollouts ("hard problems get
        +16"); from round 4 on, 64 more (the paper's round 4 spends 64-128 rollouts on the unsolved ones).
        """
        if round_idx < 1:
            raise ValueError(f"round_idx is 1-based like the paper's rounds, got {round_idx}")
        base: dict[str, Any] = {
            "mode": "terminal" if round_idx <= 2 else "ppm",
            "rollouts": 8 if round_idx == 1 else 16,
            "temperature": 0.7 if round_idx == 1 else 1.0,
            "extra_rollouts_if_unsolved": 64 if round_idx >= 4 else 16,
        }
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_help(cls: type) -> dict[str, str]:
    """{field name: help text} of a config dataclass, for CLIs and parameter forms."""
    return {f.name: str(f.metadata.get("help", "")) for f in dataclasses.fields(cls)}

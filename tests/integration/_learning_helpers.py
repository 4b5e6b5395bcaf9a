"""One short self-evolution round on a tiny local model, measured; the checks that say whether it learned; mutants.

`tests/integration/test_learning.py` uses this to catch a change that silently stops the pipeline from learning (a
wrong sign in Q back-propagation, a pair builder that labels the wrong side, SFT data that is not the verified
trajectories, a trainer that does nothing) while every stage still runs green. Everything runs through the real
library functions, on CPU, deterministically for a seed:

    cfg = LearningConfig(seed=0)
    world = easy_world(cfg)                                   # seed / train / held-out problems, disjoint
    boot = bootstrap(cfg, world, work / "boot")               # tiny Qwen2 + short seed SFT = the round-1 policy
    with Sandbox(SandboxConfig(workers=2)) as sandbox:
        out = run_round(cfg, world, boot, work / "round", sandbox)
    failures = learning_failures(out, cfg)                    # {} when the round learned; else {check: why}

The stand-in for the paper's round 1 (docs/training.md, "How CI catches a model that stops learning"):

- **World** (`easy_world`): "Maya has 8 shells and sells 3 of them. How many shells ...", numbers 2..`max_number`;
  the verb alone decides `total = a + b` or `total = a - b` (the sandbox does the arithmetic). Train and held-out
  problems use verbs the bootstrap has no preference for.
- **Bootstrap** (the paper's round-1 generator): a random tiny Qwen2 (`TinyModelConfig(corpus="world")`: names,
  items and step words are single tokens), fine-tuned by `seed_sft` on reference solutions of the seed split: the
  two `seed_verbs` with their operation, the other verbs with a random one. It knows the format and copies the
  numbers, but picks the operation of a train / held-out verb by chance.
- **Round**: terminal-guided MCTS (`synthesize`) with the bootstrap on the train split -> `build_sft` (top-k by Q)
  and `build_pairs` -> `train_policy` continuing from the bootstrap (our bootstrap plays the part of the paper's
  pre-trained base model; "from base" would mean from random weights, which knows nothing) -> `train_ppm` on the
  trained policy's backbone.
- **Measured** on the held-out split (never searched, never trained on): greedy accuracy of bootstrap and trained
  policy (`evaluate`), and how well the PPM ranks N sampled trajectories of the bootstrap per problem (pairwise
  accuracy between correct and wrong ones, best-of-N by PPM against a random pick among the answered samples).

`MUTANTS` are the bugs the checks must catch; `mutated(name)` applies one (monkeypatching, undone on exit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from rstar.config import SearchConfig
from rstar.data.world import ITEMS, NAMES, WorldProblem
from rstar.models.tiny import TinyModelConfig
from rstar.train.common import TrainConfig
from rstar.types import CodeExecutor, Problem
from rstar.verify.steps import build_prompt

# ----------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class SeedSFT:
    """The bootstrap's fine-tuning on reference solutions (a plain AdamW loop; see `seed_sft`)."""

    steps: int = 500
    learning_rate: float = 5e-3
    batch_size: int = 16
    warmup: int = 30
    scope: str = "full"  # "full": the whole reference completion; "policy": only what the policy writes


MODEL = TinyModelConfig(
    vocab_size=1536,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    corpus="world",
)
SEARCH = SearchConfig(
    mode="terminal",
    rollouts=4,
    candidates=6,
    temperature=1.0,
    max_depth=4,
    max_step_tokens=40,
    max_active_trees=256,
)
POLICY_TRAIN = TrainConfig(
    learning_rate=1e-3, num_epochs=8, batch_size=16, warmup=0.2, weight_decay=0.0, max_length=256, logging_steps=5
)
PPM_TRAIN = TrainConfig.for_ppm(
    learning_rate=3e-3, num_epochs=3, batch_size=16, warmup=0.1, weight_decay=0.0, max_length=256, logging_steps=5
)


@dataclass(frozen=True)
class LearningConfig:
    """Every knob of the learning check. `seed` drives the world, the model init, training order and sampling."""

    seed: int = 0
    max_number: int = 9  # numbers are 2..max_number, the first larger than the second
    seed_verbs: tuple[str, ...] = ("gets", "loses")  # the verbs the bootstrap is taught
    seed_new_verb_share: float = 0.5  # share of seed problems with a train / held-out verb and a random operation
    seed_problems: int = 400  # reference solutions for the bootstrap SFT
    train_problems: int = 160  # searched by MCTS in the round
    heldout_problems: int = 100  # only evaluated
    model: TinyModelConfig = MODEL
    seed_sft: SeedSFT = field(default_factory=SeedSFT)
    search: SearchConfig = SEARCH
    sft_k: int = 2
    policy_train: TrainConfig = POLICY_TRAIN
    ppm_train: TrainConfig = PPM_TRAIN
    bon_n: int = 8  # sampled trajectories per held-out problem for the PPM checks
    eval_max_step_tokens: int = 40
    # thresholds of `learning_failures`
    bootstrap_band: tuple[float, float] = (0.05, 0.75)  # the bootstrap solves some but not all held-out problems
    min_policy_gain: float = 0.10  # trained greedy - bootstrap greedy, held-out
    min_coverage: float = 0.5  # share of train problems with a correct trajectory in the trees
    min_q_separation: float = 1.0  # mean Q(step reaching only correct answers) - mean Q(step reaching only wrong ones)
    min_pairs: int = 40
    min_pair_yield: float = 0.5  # mixed nodes that give at least one pair, over all mixed nodes
    min_pair_orientation: float = 0.95  # pairs whose chosen node reaches a correct answer, rejected only wrong ones
    min_ppm_pair_accuracy: float = 0.7  # held-out: P(score(correct trajectory) > score(wrong one)), same problem
    min_bon_gain: float = 0.05  # held-out: best-of-N by PPM - expected accuracy of a random answered sample

    def with_seed(self, seed: int) -> LearningConfig:
        """The same setting under another seed (world, model, training and sampling all change)."""
        return dataclasses.replace(
            self,
            seed=seed,
            model=dataclasses.replace(self.model, seed=seed),
            search=dataclasses.replace(self.search, seed=seed),
            policy_train=dataclasses.replace(self.policy_train, seed=seed),
            ppm_train=dataclasses.replace(self.ppm_train, seed=seed),
        )


# ----------------------------------------------------------------------------------------------------------------------
# The easy world


@dataclass(frozen=True)
class EasyWorld:
    seed: tuple[WorldProblem, ...]
    train: tuple[WorldProblem, ...]
    heldout: tuple[WorldProblem, ...]

    def problems(self, split: str) -> list[Problem]:
        return [p.to_problem(split) for p in getattr(self, split)]


ADD_VERBS = ("gets", "buys", "finds", "wins", "makes")
SUB_VERBS = ("loses", "sells", "eats", "breaks", "drops")


def verb_problem(rng: random.Random, verb: str, max_number: int, add: bool | None = None) -> WorldProblem:
    """One problem of the easy world: the same sentence for both operations, only the verb says which (`add` given:
    that operation whatever the verb, for the bootstrap's uninformative seed problems).

    Maya has 8 shells and sells 3 of them. How many shells does Maya have now?
    # Step 1: subtract them / total = 8 - 3 / <end_of_step> / # Now print the final answer / print(total) ...
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    b = rng.randint(2, max_number - 1)
    a = rng.randint(b + 1, max_number)
    if add is None:
        add = verb in ADD_VERBS
    question = f"{name} has {a} {item} and {verb} {b} of them. How many {item} does {name} have now?"
    op, comment = ("+", "add them") if add else ("-", "subtract them")
    steps = ((comment, f"total = {a} {op} {b}"), ("", "print(total)"))
    return WorldProblem(question, str(a + b if add else a - b), 1, "add" if add else "sub", steps)


def easy_world(cfg: LearningConfig) -> EasyWorld:
    """Seed / train / held-out problems, disjoint, each split from its own seeded stream (held-out drawn first).

    Train and held-out use the verbs not in `seed_verbs`. The seed split uses `seed_verbs` with their operation and,
    for a `seed_new_verb_share` of its problems, the other verbs with a **random** operation: the bootstrap learns the
    format, the number copying and every verb's token, but no preference for which operation an unseen verb means.
    It must find that out by search; the round's SFT on the verified trajectories is what teaches it.
    """
    taken: set[str] = set()

    def draw(
        stream: str, n: int, verbs: Sequence[str], other: Sequence[str] = (), share: float = 0.0
    ) -> tuple[WorldProblem, ...]:
        rng = random.Random(f"learning-{cfg.seed}-{stream}")
        out: list[WorldProblem] = []
        for _ in range(100 * max(n, 1)):
            if len(out) == n:
                break
            if rng.random() < share:
                p = verb_problem(rng, rng.choice(other), cfg.max_number, add=rng.random() < 0.5)
            else:
                p = verb_problem(rng, rng.choice(verbs), cfg.max_number)
            if p.question not in taken:
                taken.add(p.question)
                out.append(p)
        if len(out) < n:
            raise RuntimeError(f"could not draw {n} distinct {stream} problems")
        return tuple(out)

    new_verbs = [v for v in (*ADD_VERBS, *SUB_VERBS) if v not in cfg.seed_verbs]
    heldout = draw("heldout", cfg.heldout_problems, new_verbs)
    train = draw("train", cfg.train_problems, new_verbs)
    seed = draw("seed", cfg.seed_problems, cfg.seed_verbs, new_verbs, cfg.seed_new_verb_share)
    return EasyWorld(seed=seed, train=train, heldout=heldout)


# ----------------------------------------------------------------------------------------------------------------------
# Bootstrap


@dataclass(frozen=True)
class Bootstrap:
    base: Path  # the random tiny model
    policy: Path  # after the seed SFT
    losses: tuple[float, ...]
    seconds: float


def seed_sft(base: Path, out_dir: Path, rows: Sequence[tuple[str, str]], cfg: SeedSFT, seed: int) -> list[float]:
    """Fine-tune a causal LM on (prompt, completion) rows: loss on the completion and the EOS after it, as
    `rstar.train.policy.train_policy` does, in a plain loop that computes logits only where the loss needs them.

    The bootstrap stands in for the paper's round-1 generator (a 236B model nobody trains here), so it need not go
    through our trainer; the round's own SFT does. This loop is ~2x faster than TRL's on CPU for a tiny model (TRL's
    chunked log-prob kernel dominates a step at this size), which is most of the test's budget.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    examples = []
    for prompt, completion in rows:
        p = tok(prompt).input_ids
        c = [*tok(completion).input_ids, tok.eos_token_id]
        examples.append((p + c, len(p)))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's ops are too small to split; see rstar.models.policy_hf.HFPolicy
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / max(1, cfg.warmup)) * max(0.0, (cfg.steps - s) / max(1, cfg.steps - cfg.warmup)),
    )
    losses: list[float] = []
    order: list[int] = []
    model.train()
    for _ in range(cfg.steps):
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        batch = [examples[order.pop()] for _ in range(cfg.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        target = torch.zeros((len(batch), width), dtype=torch.bool)
        for i, (row, n_prompt) in enumerate(batch):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            target[i, n_prompt : len(row)] = True
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pos = target[:, 1:]  # position t predicts token t+1
        logits = model.lm_head(hidden[:, :-1][pos])
        loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:][pos])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
        if os.environ.get("LEARN_DEBUG") and len(losses) % 50 == 0:
            print(f"seed_sft step {len(losses)} loss {losses[-1]:.3f}", flush=True)
    torch.set_num_threads(threads)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return losses


def bootstrap(cfg: LearningConfig, world: EasyWorld, out_dir: Path) -> Bootstrap:
    """Build the random tiny model and fine-tune it on the seed split's reference solutions."""
    from rstar.models.tiny import build_tiny_model

    t0 = time.perf_counter()
    base = build_tiny_model(out_dir / "base", cfg.model)
    rows = []
    for p in world.seed:
        completion = p.reference_completion()
        if cfg.seed_sft.scope == "policy":
            completion = completion[: completion.index("<output>")]
        rows.append((build_prompt(p.question), completion))
    losses = seed_sft(base, out_dir / "policy", rows, cfg.seed_sft, cfg.seed)
    return Bootstrap(base=base, policy=out_dir / "policy", losses=tuple(losses), seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------------
# Mutants: the bugs the learning check must catch


MUTANTS: tuple[str, ...] = ("flip_q_sign", "swap_pair_sides")


@contextlib.contextmanager
def mutated(name: str | None) -> Iterator[None]:
    """Apply one mutant for the duration of the block (None: the real code).

    - `flip_q_sign`: `Tree.backup` adds -value instead of value: every terminal reward is back-propagated with the
      wrong sign (correct answers push their path's Q down). The graded `correct` flags are untouched, so SFT still
      takes only correct trajectories; only the Q-based parts (ranking, the pair filter Q(chosen) > Q(rejected), the
      PPM) can notice.
    - `swap_pair_sides`: the pair builder labels the wrong side: every pair's chosen and rejected texts (and ids) are
      swapped, Qs left as computed, so the PPM is taught to prefer the step that leads to a wrong answer.
    """
    if name is None:
        yield
        return
    if name not in MUTANTS:
        raise ValueError(f"unknown mutant {name!r}; known: {MUTANTS}")
    mp = pytest.MonkeyPatch()
    try:
        if name == "flip_q_sign":
            from rstar.search import tree as tree_mod

            real_backup = tree_mod.Tree.backup

            def backup(self: Any, idx: int, value: float) -> None:
                real_backup(self, idx, -value)

            mp.setattr(tree_mod.Tree, "backup", backup)
        else:
            from rstar.data import pairs as pairs_mod

            real_pairs = pairs_mod.pairs_from_trees

            def pairs_from_trees(*args: Any, **kwargs: Any) -> Any:
                df, stats = real_pairs(*args, **kwargs)
                swapped = df.with_columns(
                    chosen=pl.col("rejected"),
                    rejected=pl.col("chosen"),
                    chosen_id=pl.col("rejected_id"),
                    rejected_id=pl.col("chosen_id"),
                )
                return swapped, stats

            mp.setattr(pairs_mod, "pairs_from_trees", pairs_from_trees)
        yield
    finally:
        mp.undo()


# ----------------------------------------------------------------------------------------------------------------------
# The round and what it measures


@dataclass
class RoundOutcome:
    """Every number the checks read, plus timings (seconds per stage)."""

    bootstrap_greedy: float
    trained_greedy: float | None = None
    coverage: float = 0.0
    sft_rows: int = 0
    sft_problems: int = 0
    answer_terminals: int = 0
    q_correct_steps: float | None = None  # mean Q of step nodes whose subtree reaches only correct answers
    q_wrong_steps: float | None = None  # ... only wrong answers
    mixed_nodes: int = 0
    pair_nodes: int = 0  # mixed nodes with at least one step pair
    pairs: int = 0
    step_pairs: int = 0
    final_pairs: int = 0
    oriented_pairs: int = 0  # pairs whose chosen node reaches a correct answer and rejected node only wrong ones
    ppm_tree_heldout_accuracy: float | None = None  # train_ppm's own held-out pairs (5% of the train problems)
    ppm_pair_accuracy: float | None = None  # held-out problems' sampled trajectories, correct vs wrong
    ppm_pairs_compared: int = 0
    bon: float | None = None
    random_pick: float | None = None
    maj: float | None = None
    errors: list[str] = field(default_factory=list)  # stages that raised (a mutant can break a stage outright)
    seconds: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def q_separation(self) -> float | None:
        if self.q_correct_steps is None or self.q_wrong_steps is None:
            return None
        return self.q_correct_steps - self.q_wrong_steps

    def summary(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["q_separation"] = self.q_separation
        d.pop("train_metrics")
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def greedy_accuracy(
    policy: Any, problems: Sequence[Problem], executor: CodeExecutor, out_dir: Path, cfg: LearningConfig
) -> float:
    from rstar.eval.config import EvalConfig
    from rstar.eval.runner import evaluate

    config = EvalConfig(max_step_tokens=cfg.eval_max_step_tokens, max_steps=cfg.search.max_depth, batch_size=256)
    report = evaluate(
        policy, {"heldout": problems}, modes=("greedy",), out_dir=out_dir, executor=executor, config=config, plot=False
    )
    return report.accuracy("heldout", "greedy")


def step_q_means(nodes: pl.DataFrame) -> tuple[float | None, float | None, int]:
    """(mean Q of visited step nodes whose subtree reaches only correct answers, the same for only wrong answers,
    answer terminals). Step nodes are non-terminal nodes below the root: the steps the PPM and SFT ranking judge."""
    from rstar.data.trees import build_trees

    trees, _ = build_trees(nodes)
    good: list[float] = []
    bad: list[float] = []
    terminals = 0
    for tree in trees:
        for nid, node in tree.nodes.items():
            if node.is_answer:
                terminals += 1
            if nid == tree.root or node.is_terminal or node.q is None:
                continue
            reaches_correct, reaches_wrong = tree.flags(nid)
            if reaches_correct and not reaches_wrong:
                good.append(node.q)
            elif reaches_wrong and not reaches_correct:
                bad.append(node.q)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return mean(good), mean(bad), terminals


def pair_orientation(nodes: pl.DataFrame, pairs: pl.DataFrame) -> tuple[int, int]:
    """(pairs whose chosen node reaches a correct answer and whose rejected node reaches only wrong ones, pairs).

    Read from the trees' outcome flags by node id, independently of the Q-values the pair builder ranks by: this is
    what the PPM is taught, so a pair builder that labels the wrong side fails it whatever the PPM then learns.
    """
    from rstar.data.trees import build_trees

    trees, _ = build_trees(nodes)
    by_id = {t.tree_id: t for t in trees}
    right = 0
    for tree_id, chosen, rejected in pairs.select(["tree_id", "chosen_id", "rejected_id"]).iter_rows():
        tree = by_id.get(tree_id)
        if tree is None or chosen not in tree.nodes or rejected not in tree.nodes:
            continue
        chosen_correct, _ = tree.flags(chosen)
        rejected_correct, rejected_wrong = tree.flags(rejected)
        right += int(chosen_correct and rejected_wrong and not rejected_correct)
    return right, pairs.height


def mixed_node_count(nodes: pl.DataFrame) -> int:
    from rstar.data.trees import build_trees

    trees, _ = build_trees(nodes)
    return sum(1 for t in trees for nid in t.nodes if all(t.flags(nid)))


def ppm_ranking(results: Sequence[Any]) -> tuple[float | None, int, float | None, float | None]:
    """From best-of-N results: (pairwise accuracy of the PPM between correct and wrong answered samples of the same
    problem, pairs compared, best-of-N accuracy, expected accuracy of picking one answered sample at random)."""
    from rstar.verify.answer import is_equiv

    wins = 0.0
    compared = 0
    random_pick: list[float] = []
    for r in results:
        scored = [(a, s) for a, s in zip(r.answers, r.scores, strict=True) if a is not None and s is not None]
        if not scored:
            random_pick.append(0.0)
            continue
        right = [s for a, s in scored if is_equiv(r.gold, a)]
        wrong = [s for a, s in scored if not is_equiv(r.gold, a)]
        random_pick.append(len(right) / len(scored))
        for c in right:
            for w in wrong:
                wins += 1.0 if c > w else 0.5 if c == w else 0.0
                compared += 1
    n = len(results)
    bon = sum(bool(r.correct) for r in results) / n if n else None
    return (wins / compared if compared else None), compared, bon, (sum(random_pick) / n if n else None)


def run_round(
    cfg: LearningConfig,
    world: EasyWorld,
    boot: Bootstrap,
    out_dir: Path,
    executor: CodeExecutor,
    *,
    boot_policy: Any = None,
    bootstrap_greedy: float | None = None,
    train_policy_stage: bool = True,
    ppm_stage: bool = True,
    keep_trees: bool = False,
) -> RoundOutcome:
    """One round from the bootstrap: search, data, training, held-out measurements. Stages that raise are recorded in
    `errors` (and the later stages that need them skipped), so a mutant that breaks a stage is a failed check, not a
    crashed test."""
    from rstar.data.pairs import build_pairs
    from rstar.data.sft import build_sft
    from rstar.eval.config import EvalConfig
    from rstar.eval.runner import evaluate
    from rstar.models.policy_hf import HFPolicy
    from rstar.models.ppm import HFRewardModel
    from rstar.search import synthesize
    from rstar.train.policy import train_policy
    from rstar.train.ppm import train_ppm

    out_dir.mkdir(parents=True, exist_ok=True)
    secs: dict[str, float] = {}

    def timed(stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            secs[stage] = round(time.perf_counter() - t, 2)

    heldout = world.problems("heldout")
    policy = boot_policy or HFPolicy(boot.policy, model_id="bootstrap", device="cpu")
    if bootstrap_greedy is None:
        bootstrap_greedy = timed(
            "eval_bootstrap", greedy_accuracy, policy, heldout, executor, out_dir / "eval-boot", cfg
        )
    out = RoundOutcome(bootstrap_greedy=bootstrap_greedy, seconds=secs)

    result = timed("mcts", synthesize, world.problems("train"), policy, executor, cfg.search, round_idx=1)
    nodes, problems = result.nodes, result.problems
    out.train_metrics["mcts"] = result.stats.to_dict()
    if keep_trees:
        nodes.write_parquet(out_dir / "nodes.parquet")
        problems.write_parquet(out_dir / "problems.parquet")
    out.coverage = float(problems["solved"].mean() or 0.0)
    out.q_correct_steps, out.q_wrong_steps, out.answer_terminals = step_q_means(nodes)
    out.mixed_nodes = mixed_node_count(nodes)

    sft = timed("build_sft", build_sft, nodes, problems, k=cfg.sft_k)
    pairs = timed("build_pairs", build_pairs, nodes, problems)
    out.sft_rows, out.sft_problems = sft.height, sft["problem_id"].n_unique()
    out.pairs = pairs.height
    out.step_pairs = pairs.filter(pl.col("kind") == "step").height
    out.final_pairs = pairs.filter(pl.col("kind") == "final").height
    step = pairs.filter(pl.col("kind") == "step")
    out.pair_nodes = step.select(["tree_id", "node_id"]).unique().height
    out.oriented_pairs, _ = pair_orientation(nodes, pairs)

    trained_path: Path | None = None
    if train_policy_stage:
        try:
            res = timed(
                "train_policy",
                train_policy,
                sft,
                boot.base,
                out_dir / "policy",
                cfg.policy_train,
                init_from=boot.policy,
            )
            trained_path = res.path
            out.train_metrics["policy"] = {k: res.metrics[k] for k in ("examples", "steps", "first_loss", "last_loss")}
            trained = HFPolicy(res.path, model_id="trained", device="cpu")
            out.trained_greedy = timed(
                "eval_trained", greedy_accuracy, trained, heldout, executor, out_dir / "eval-trained", cfg
            )
        except Exception as exc:
            out.errors.append(f"train_policy: {type(exc).__name__}: {exc}")
    if not ppm_stage:
        return out
    ppm_base = trained_path or boot.policy
    try:
        res = timed("train_ppm", train_ppm, pairs, ppm_base, out_dir / "ppm", cfg.ppm_train)
        out.ppm_tree_heldout_accuracy = res.metrics["heldout_accuracy"]
        out.train_metrics["ppm"] = {
            k: res.metrics[k]
            for k in ("train_pairs", "heldout_pairs", "steps", "first_loss", "last_loss", "train_accuracy")
        }
        ppm = HFRewardModel(res.path, model_id="ppm", device="cpu", batch_size=64)
        ecfg = EvalConfig(
            max_step_tokens=cfg.eval_max_step_tokens,
            max_steps=cfg.search.max_depth,
            temperature=cfg.search.temperature,
            batch_size=256,
            seed=cfg.seed,
        )
        report = timed(
            "eval_ppm",
            evaluate,
            policy,
            {"heldout": heldout},
            modes=("bon", "maj"),
            budgets=(cfg.bon_n,),
            out_dir=out_dir / "eval-ppm",
            reward_model=ppm,
            executor=executor,
            config=ecfg,
            plot=False,
        )
        bon_results = [r for r in report.results if r.mode == "bon"]
        out.ppm_pair_accuracy, out.ppm_pairs_compared, out.bon, out.random_pick = ppm_ranking(bon_results)
        out.maj = report.accuracy("heldout", "maj", cfg.bon_n)
    except Exception as exc:
        out.errors.append(f"train_ppm: {type(exc).__name__}: {exc}")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The checks


def learning_failures(
    out: RoundOutcome, cfg: LearningConfig, *, policy: bool = True, ppm: bool = True
) -> dict[str, str]:
    """Every check the round failed, as {check name: what was measured}; empty when the round learned.

    | check | catches |
    |---|---|
    | `bootstrap_band` | a setting where the test proves nothing (bootstrap solves nothing or everything) |
    | `policy_gain` | SFT data that is not the verified trajectories, a trainer that does not train, broken search |
    | `coverage` | a search that stopped finding correct answers |
    | `q_separation` | Q-values that do not rank steps by their outcome (a flipped back-up sign) |
    | `pairs` | a pair builder / Q filter that yields (almost) no pairs (a flipped sign empties the Q(c) > Q(r) filter) |
    | `pair_orientation` | pairs whose chosen side is not the step that reaches the correct answer (swapped sides) |
    | `ppm_ranking` | a PPM that does not rank correct above wrong sampled trajectories of held-out problems |
    | `ppm_best_of_n` | the same as an accuracy: best-of-N by the PPM must beat a random pick among the samples |

    `policy=False` skips `bootstrap_band` and `policy_gain` (a round run with `train_policy_stage=False`, as the
    mutant checks do: the mutants change search and pair building, not the SFT data); `ppm=False` skips the PPM
    checks (a round run with `ppm_stage=False`).
    """
    f: dict[str, str] = {}
    lo, hi = cfg.bootstrap_band
    if policy and not lo <= out.bootstrap_greedy <= hi:
        f["bootstrap_band"] = f"bootstrap greedy accuracy {out.bootstrap_greedy:.2f} outside [{lo}, {hi}]"
    if policy and (out.trained_greedy is None or out.trained_greedy - out.bootstrap_greedy < cfg.min_policy_gain):
        f["policy_gain"] = (
            f"held-out greedy accuracy: trained {out.trained_greedy} vs bootstrap {out.bootstrap_greedy:.2f} "
            f"(need +{cfg.min_policy_gain})"
        )
    if out.coverage < cfg.min_coverage:
        f["coverage"] = f"MCTS coverage {out.coverage:.2f} < {cfg.min_coverage}"
    sep = out.q_separation
    if sep is None or sep < cfg.min_q_separation:
        f["q_separation"] = (
            f"Q(correct steps) {out.q_correct_steps} - Q(wrong steps) {out.q_wrong_steps} = {sep} < {cfg.min_q_separation}"
        )
    yield_ = out.pair_nodes / out.mixed_nodes if out.mixed_nodes else 0.0
    if out.pairs < cfg.min_pairs or yield_ < cfg.min_pair_yield:
        f["pairs"] = f"{out.pairs} pairs (need {cfg.min_pairs}), {out.pair_nodes}/{out.mixed_nodes} mixed nodes paired"
    oriented = out.oriented_pairs / out.pairs if out.pairs else 0.0
    if oriented < cfg.min_pair_orientation:
        f["pair_orientation"] = (
            f"{out.oriented_pairs}/{out.pairs} pairs prefer the step that reaches the correct answer "
            f"(need {cfg.min_pair_orientation:.0%})"
        )
    if ppm:
        acc = out.ppm_pair_accuracy
        if acc is None or acc < cfg.min_ppm_pair_accuracy:
            f["ppm_ranking"] = f"PPM pairwise accuracy on held-out samples {acc} < {cfg.min_ppm_pair_accuracy}"
        if out.bon is None or out.random_pick is None or out.bon - out.random_pick < cfg.min_bon_gain:
            f["ppm_best_of_n"] = (
                f"best-of-{cfg.bon_n} by PPM {out.bon} vs random pick {out.random_pick} (need +{cfg.min_bon_gain})"
            )
    for e in out.errors:
        f.setdefault("errors", e)
    return f

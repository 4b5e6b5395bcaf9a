"""CI catches a pipeline that runs green but stopped learning (issue 7; docs/training.md, "How CI catches a model
that stops learning").

One short self-evolution round on a tiny locally built Qwen2, on an easy world (add / sub problems whose train /
held-out verbs the bootstrap has no preference for): MCTS -> SFT rows + preference pairs -> policy SFT and PPM, all
through the real library code. The trained policy must beat the bootstrap on held-out problems, the trees and pairs
must carry the outcome signal, and the PPM must rank correct above wrong trajectories of held-out problems. Each mutant (a flipped Q sign in back-propagation, a pair builder that labels
the wrong side) must make the same checks fail: a check that passes under a mutant proves nothing.

The bootstrap, the sandbox and the real round are module-scoped: the mutant rounds reuse them and skip the policy
training they cannot affect (both mutants change search / pair building, never which trajectories are correct); their
PPM is trained on the bootstrap's backbone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _learning_helpers import (
    MUTANTS,
    Bootstrap,
    EasyWorld,
    LearningConfig,
    RoundOutcome,
    bootstrap,
    easy_world,
    learning_failures,
    mutated,
    run_round,
)

from rstar.types import CodeExecutor

pytestmark = pytest.mark.slow

# The checks each mutant must fail (it may fail more). flip_q_sign: Q ranks wrong steps first and the pair filter
# Q(chosen) > Q(rejected) rejects every pair, so no PPM can be trained. swap_pair_sides: the PPM learns the opposite
# preference and ranks wrong trajectories of held-out problems first.
EXPECTED_FAILURES = {
    "flip_q_sign": {"q_separation", "pairs"},
    "swap_pair_sides": {"pair_orientation", "ppm_ranking", "ppm_best_of_n"},
}


@dataclass(frozen=True)
class Setting:
    cfg: LearningConfig
    world: EasyWorld
    boot: Bootstrap
    work: Path
    sandbox: CodeExecutor


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    from rstar.verify.sandbox import Sandbox, SandboxConfig

    work = tmp_path_factory.mktemp("learning")
    cfg = LearningConfig(seed=0)
    world = easy_world(cfg)
    boot = bootstrap(cfg, world, work / "boot")
    with Sandbox(SandboxConfig(workers=2)) as sandbox:
        yield Setting(cfg, world, boot, work, sandbox)


@pytest.fixture(scope="module")
def real_round(setting: Setting) -> RoundOutcome:
    s = setting
    return run_round(s.cfg, s.world, s.boot, s.work / "real", s.sandbox)


def describe(out: RoundOutcome) -> str:
    return json.dumps(out.summary(), default=str)


def test_easy_world_splits_are_disjoint_and_teach_other_verbs() -> None:
    cfg = LearningConfig(seed=0)
    world = easy_world(cfg)
    questions = [{p.question for p in getattr(world, split)} for split in ("seed", "train", "heldout")]
    assert [len(q) for q in questions] == [cfg.seed_problems, cfg.train_problems, cfg.heldout_problems]
    assert not (questions[0] & questions[1]) and not (questions[0] & questions[2]) and not (questions[1] & questions[2])
    for p in (*world.train, *world.heldout):
        assert not any(f" {verb} " in p.question for verb in cfg.seed_verbs), p.question
    assert {p.template for p in world.heldout} == {"add", "sub"}
    # the seed split teaches the format with every verb, but the train / held-out verbs with a random operation
    new_verb_seed = [p for p in world.seed if not any(f" {verb} " in p.question for verb in cfg.seed_verbs)]
    assert len(new_verb_seed) == pytest.approx(cfg.seed_new_verb_share * cfg.seed_problems, rel=0.2)
    ops_by_verb: dict[str, set[str]] = {}
    for p in new_verb_seed:
        verb = p.question.split(" and ")[1].split(" ")[0]
        ops_by_verb.setdefault(verb, set()).add(p.template)
    assert all(ops == {"add", "sub"} for ops in ops_by_verb.values()), ops_by_verb
    assert easy_world(cfg) == world  # deterministic for a seed


def test_one_round_makes_the_policy_better_on_heldout(setting: Setting, real_round: RoundOutcome) -> None:
    out = real_round
    print(describe(out))  # the measured numbers, in the CI log with -rP
    assert out.errors == [], out.errors
    failures = learning_failures(out, setting.cfg)
    assert failures == {}, f"the round did not learn: {failures}\nmeasured: {describe(out)}"
    # the headline number, spelled out: the trained policy beats the bootstrap (untrained on these verbs) on held-out
    assert out.trained_greedy is not None
    assert out.trained_greedy >= out.bootstrap_greedy + setting.cfg.min_policy_gain, describe(out)


@pytest.mark.parametrize("mutant", MUTANTS)
def test_mutant_fails_the_learning_check(setting: Setting, real_round: RoundOutcome, mutant: str) -> None:
    s = setting
    # the same checks pass on the real code (else a failure below would prove nothing about the mutant)
    assert learning_failures(real_round, s.cfg, policy=False) == {}, describe(real_round)
    with mutated(mutant):
        out = run_round(
            s.cfg,
            s.world,
            s.boot,
            s.work / mutant,
            s.sandbox,
            bootstrap_greedy=real_round.bootstrap_greedy,
            train_policy_stage=False,
        )
    failures = learning_failures(out, s.cfg, policy=False)
    missing = EXPECTED_FAILURES[mutant] - failures.keys()
    assert not missing, f"{mutant} passed the checks {sorted(missing)}: {failures}\nmeasured: {describe(out)}"
    # the search itself is untouched by either mutant: as many problems solved as with the real code
    assert out.coverage == pytest.approx(real_round.coverage, abs=0.1), describe(out)


def test_mutated_restores_the_real_code() -> None:
    from rstar.data import pairs as pairs_mod
    from rstar.search import tree as tree_mod

    backup, pairs_from_trees = tree_mod.Tree.backup, pairs_mod.pairs_from_trees
    for mutant in MUTANTS:
        with mutated(mutant):
            assert (tree_mod.Tree.backup, pairs_mod.pairs_from_trees) != (backup, pairs_from_trees)
        assert (tree_mod.Tree.backup, pairs_mod.pairs_from_trees) == (backup, pairs_from_trees)
    with pytest.raises(ValueError, match="unknown mutant"), mutated("no_such_mutant"):
        pass

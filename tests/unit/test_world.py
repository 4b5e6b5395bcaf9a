"""The generated problem world: deterministic, disjoint splits, exact answers that the reference code reproduces."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rstar.data.problems import load_problems
from rstar.data.world import TEMPLATES, WorldConfig, generate_world, write_world
from rstar.verify.steps import STOP_STRINGS, parse_step


def _run(code: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})
    return buf.getvalue().strip()


def test_same_seed_same_world_other_seed_other_world() -> None:
    a = generate_world(WorldConfig(seed=1, train=50, heldout=20, seed_sft=10))
    b = generate_world(WorldConfig(seed=1, train=50, heldout=20, seed_sft=10))
    c = generate_world(WorldConfig(seed=2, train=50, heldout=20, seed_sft=10))
    assert a == b
    assert [p.question for p in a.train] != [p.question for p in c.train]


def test_splits_are_disjoint_and_sized() -> None:
    w = generate_world(WorldConfig(seed=0, train=300, heldout=150, seed_sft=40))
    train, held, seed = ({p.question for p in s} for s in (w.train, w.heldout, w.seed))
    assert (len(train), len(held), len(seed)) == (300, 150, 40)
    assert not train & held and not train & seed and not held & seed


def test_heldout_does_not_change_when_train_grows() -> None:
    small = generate_world(WorldConfig(seed=3, train=10, heldout=30))
    big = generate_world(WorldConfig(seed=3, train=200, heldout=30))
    assert small.heldout == big.heldout


def test_every_level_appears_and_seed_split_is_easy() -> None:
    w = generate_world(WorldConfig(seed=0, train=400, heldout=10, seed_sft=30))
    assert {p.level for p in w.train} == set(TEMPLATES)
    assert {p.level for p in w.seed} <= {1, 2}


@pytest.mark.parametrize("level", sorted(TEMPLATES))
def test_reference_solutions_print_the_gold_answer(level: int) -> None:
    import random

    r = random.Random(level)
    for template in TEMPLATES[level]:
        for _ in range(25):
            p = template(r)
            assert _run("\n".join(code for _, code in p.steps)) == p.answer, (p.template, p.question)


def test_reference_completion_parses_as_our_step_format() -> None:
    p = generate_world(WorldConfig(seed=0, train=5, heldout=0, seed_sft=0)).train[0]
    text = p.reference_completion()
    chunks = []
    rest = text
    while True:  # split where the policy would be stopped
        hits = [(rest.find(s), s) for s in STOP_STRINGS if s in rest]
        if not hits:
            break
        i, s = min(hits)
        chunks.append((rest[:i], s))
        rest = rest[i + len(s) :]
        if s == "<end_of_code>":
            break
    kinds = [parse_step(body, s).kind for body, s in chunks]
    assert kinds[-1] == "final_code" and all(k == "intermediate" for k in kinds[:-1])


def test_written_files_load_as_problem_sets(tmp_path: Path) -> None:
    paths = write_world(generate_world(WorldConfig(seed=0, train=20, heldout=10, seed_sft=5)), tmp_path)
    train, report = load_problems(paths["train"])
    assert len(train) == 20 and not report.errors
    assert all(p.level is not None and p.answer for p in train)
    sft = [json.loads(line) for line in paths["seed_sft"].read_text().splitlines()]
    assert len(sft) == 5 and all(r["prompt"].endswith("<code>\n") for r in sft)
    assert json.loads((tmp_path / "world.json").read_text())["counts"] == {"train": 20, "heldout": 10, "seed": 5}


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        WorldConfig(levels=(1, 9), level_weights=(0.5, 0.5))
    with pytest.raises(ValueError):
        WorldConfig(train=-1)


def test_cli_writes_world(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rstar.cli", "world", "--out", str(tmp_path), "--train", "12", "--heldout", "6",
         "--seed-sft", "3", "--levels", "1,2"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "train.jsonl" in out.stdout
    levels = {json.loads(line)["level"] for line in (tmp_path / "train.jsonl").read_text().splitlines()}
    assert levels <= {"1", "2"}


def test_cli_seed_levels_choose_the_bootstraps_reference_solutions(tmp_path: Path) -> None:
    def run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rstar.cli", "world", "--out", str(out), "--train", "10", "--heldout", "8",
             "--seed-sft", "12", *extra],
            capture_output=True, text=True,
        )  # fmt: skip

    assert run(tmp_path / "a", "--seed-levels", "4,5").returncode == 0
    levels = {json.loads(line)["level"] for line in (tmp_path / "a" / "seed.jsonl").read_text().splitlines()}
    assert levels == {"4", "5"}
    assert run(tmp_path / "b").returncode == 0  # default 1,2; the held-out split does not depend on the seed levels
    assert (tmp_path / "a" / "heldout.jsonl").read_text() == (tmp_path / "b" / "heldout.jsonl").read_text()
    bad = run(tmp_path / "c", "--seed-levels", "9")
    assert bad.returncode == 2 and "levels must be within" in bad.stdout

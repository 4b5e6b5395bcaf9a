"""A seeded world of math word problems sized for a 135M-parameter model on CPU.

rStar-Math evolves 7B models on 747k competition problems; on two CPU cores we need problems a small model can
partly solve, so that self-evolution has signal to climb. This generator produces them, from one-operation arithmetic
(level 1) up to multi-step word problems with fractions, percentages and simple linear equations (level 5), each with
an exact gold answer, a level, a template name (used as the subject), and a reference solution written in our
code-augmented step format (used only to build a small *seed SFT* set: the CPU stand-in for the paper's round-1
bootstrap with a 236B model).

    world = generate_world(WorldConfig(seed=0, train=400, heldout=200))
    write_world(world, "out/world")   # train.jsonl, heldout.jsonl, seed.jsonl, seed_sft.jsonl, world.json

Splits are disjoint by construction: every question text appears in exactly one split (checked), and the seed split
(for the bootstrap SFT) is disjoint from both. Answers are integers or short exact decimals so the grader's job is
unambiguous and the model's job is the reasoning, not the formatting.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from rstar.data.problems import problem_id_for, write_problems_jsonl
from rstar.types import Problem
from rstar.verify.steps import END_OF_CODE, END_OF_STEP, build_prompt, render_output_block

NAMES = (
    "Tom", "Anna", "Ben", "Maya", "Leo", "Sara", "Omar", "Lina", "Ivan", "Zoe",
    "Ravi", "Mia", "Noah", "Emma", "Kai", "Nora", "Eli", "Ada", "Sam", "Ruth",
)  # fmt: skip
ITEMS = (
    "apples", "pencils", "books", "marbles", "stickers", "cookies", "cards", "shells",
    "coins", "stamps", "balloons", "cupcakes", "eggs", "flowers", "toys", "buttons",
)  # fmt: skip
CONTAINERS = ("boxes", "bags", "baskets", "packs", "jars", "crates")


@dataclass(frozen=True)
class WorldProblem:
    """A generated problem with its reference solution as (comment, code) steps; the last step prints the answer."""

    question: str
    answer: str
    level: int
    template: str
    steps: tuple[tuple[str, str], ...]

    def to_problem(self, split: str) -> Problem:
        return Problem(
            id=problem_id_for(self.question),
            question=self.question,
            answer=self.answer,
            source=f"world-{split}",
            level=str(self.level),
            subject=self.template,
        )

    def reference_completion(self) -> str:
        """The reference solution in the exact text the policy generates (plus the system-written output block)."""
        parts = []
        for i, (comment, code) in enumerate(self.steps[:-1], start=1):
            parts.append(f"# Step {i}: {comment}\n{code}\n{END_OF_STEP}\n")
        _, last_code = self.steps[-1]
        parts.append(f"# Now print the final answer\n{last_code}\n{END_OF_CODE}\n")
        parts.append(render_output_block(self.answer + "\n", self.answer))
        return "".join(parts)


def _fmt(x: Fraction | int | float) -> str:
    """Exact answer text: integers plain, otherwise a short decimal."""
    f = Fraction(x).limit_denominator(10_000)
    if f.denominator == 1:
        return str(f.numerator)
    return f"{float(f):.6g}"


Template = Callable[[random.Random], WorldProblem]


# ---- level 1: one operation --------------------------------------------------------------------------------------
def t_add(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(2, 60), r.randint(2, 40)
    q = f"{n} has {a} {it} and gets {b} more. How many {it} does {n} have now?"
    return WorldProblem(
        q, _fmt(a + b), 1, "add", ((f"add the {it} {n} gets", f"total = {a} + {b}"), ("", "print(total)"))
    )


def t_sub(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a = r.randint(20, 90)
    b = r.randint(2, a - 1)
    q = f"{n} had {a} {it} and gave away {b}. How many {it} are left?"
    return WorldProblem(
        q, _fmt(a - b), 1, "sub", ((f"subtract the {it} given away", f"left = {a} - {b}"), ("", "print(left)"))
    )


def t_mul(r: random.Random) -> WorldProblem:
    it, c = r.choice(ITEMS), r.choice(CONTAINERS)
    a, b = r.randint(2, 12), r.randint(2, 15)
    q = f"There are {a} {c} with {b} {it} in each. How many {it} are there in total?"
    return WorldProblem(
        q, _fmt(a * b), 1, "mul", ((f"multiply {c} by {it} per {c[:-1]}", f"total = {a} * {b}"), ("", "print(total)"))
    )


def t_div(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    k, each = r.randint(2, 9), r.randint(2, 12)
    a = k * each
    q = f"{n} shares {a} {it} equally among {k} friends. How many {it} does each friend get?"
    return WorldProblem(
        q, _fmt(each), 1, "div", ((f"divide the {it} among the friends", f"each = {a} // {k}"), ("", "print(each)"))
    )


# ---- level 2: two operations -------------------------------------------------------------------------------------
def t_add_sub(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b = r.randint(10, 60), r.randint(5, 40)
    c = r.randint(1, a + b - 1)
    q = f"{n} has {a} {it}, buys {b} more, and then gives {c} to a friend. How many {it} does {n} have now?"
    steps = (
        (f"add the {it} bought", f"total = {a} + {b}"),
        ("subtract the ones given away", f"left = total - {c}"),
        ("", "print(left)"),
    )
    return WorldProblem(q, _fmt(a + b - c), 2, "add_sub", steps)


def t_mul_add(r: random.Random) -> WorldProblem:
    it, c = r.choice(ITEMS), r.choice(CONTAINERS)
    a, b, extra = r.randint(2, 9), r.randint(3, 12), r.randint(1, 20)
    q = f"A shop has {a} {c} of {b} {it} each and {extra} loose {it}. How many {it} does the shop have?"
    steps = (
        (f"count the {it} in the {c}", f"in_{c} = {a} * {b}"),
        ("add the loose ones", f"total = in_{c} + {extra}"),
        ("", "print(total)"),
    )
    return WorldProblem(q, _fmt(a * b + extra), 2, "mul_add", steps)


def t_cost(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    k, price = r.randint(2, 12), r.randint(2, 15)
    paid = k * price + r.randint(0, 30)
    paid = max(paid, k * price)
    q = f"{n} buys {k} {it} at ${price} each and pays with ${paid}. How much change does {n} get, in dollars?"
    steps = (
        ("compute the cost", f"cost = {k} * {price}"),
        ("subtract the cost from what was paid", f"change = {paid} - cost"),
        ("", "print(change)"),
    )
    return WorldProblem(q, _fmt(paid - k * price), 2, "cost", steps)


def t_rate(r: random.Random) -> WorldProblem:
    n = r.choice(NAMES)
    per_day, days = r.randint(2, 20), r.randint(2, 10)
    used = r.randint(1, per_day * days - 1)
    q = f"{n} reads {per_day} pages a day for {days} days, then re-reads {used} of them. How many new pages does {n} read in total?"
    steps = (
        ("pages read in all days", f"pages = {per_day} * {days}"),
        ("the re-read pages are not new", f"new_pages = pages - {used}"),
        ("", "print(new_pages)"),
    )
    return WorldProblem(q, _fmt(per_day * days - used), 2, "rate", steps)


# ---- level 3: three steps ----------------------------------------------------------------------------------------
def t_groups(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    a, b, k = r.randint(5, 40), r.randint(5, 40), r.randint(2, 6)
    total = a + b
    total -= total % k
    b = total - a
    if b <= 0:
        a, b = total // 2, total - total // 2
    q = f"{n} collects {a} {it} on Monday and {b} on Tuesday, then puts them into {k} equal piles. How many {it} are in each pile?"
    steps = (
        ("add the two days", f"total = {a} + {b}"),
        ("split into equal piles", f"per_pile = total // {k}"),
        ("", "print(per_pile)"),
    )
    return WorldProblem(q, _fmt((a + b) // k), 3, "groups", steps)


def t_two_buyers(r: random.Random) -> WorldProblem:
    n1, n2 = r.sample(NAMES, 2)
    it = r.choice(ITEMS)
    p, k1, k2 = r.randint(2, 9), r.randint(2, 10), r.randint(2, 10)
    q = f"{it.capitalize()} cost ${p} each. {n1} buys {k1} and {n2} buys {k2}. How much do they spend together, in dollars?"
    steps = (
        (f"cost for {n1}", f"cost1 = {k1} * {p}"),
        (f"cost for {n2}", f"cost2 = {k2} * {p}"),
        ("add both", "total = cost1 + cost2"),
        ("", "print(total)"),
    )
    return WorldProblem(q, _fmt(p * (k1 + k2)), 3, "two_buyers", steps)


def t_weekly(r: random.Random) -> WorldProblem:
    n = r.choice(NAMES)
    wage, hours, days = r.randint(8, 20), r.randint(2, 8), r.randint(2, 6)
    spent = r.randint(1, wage * hours * days - 1)
    q = f"{n} earns ${wage} per hour, works {hours} hours a day for {days} days, and spends ${spent}. How many dollars does {n} have left?"
    steps = (
        ("hours worked", f"hours = {hours} * {days}"),
        ("money earned", f"earned = hours * {wage}"),
        ("subtract what was spent", f"left = earned - {spent}"),
        ("", "print(left)"),
    )
    return WorldProblem(q, _fmt(wage * hours * days - spent), 3, "weekly", steps)


# ---- level 4: fractions and percentages --------------------------------------------------------------------------
def t_fraction_of(r: random.Random) -> WorldProblem:
    n, it = r.choice(NAMES), r.choice(ITEMS)
    den = r.choice((2, 3, 4, 5, 6, 8, 10))
    num = r.randint(1, den - 1)
    total = den * r.randint(2, 12)
    q = f"{n} has {total} {it} and gives away {num}/{den} of them. How many {it} does {n} give away?"
    steps = ((f"take {num}/{den} of the {it}", f"given = {total} * {num} // {den}"), ("", "print(given)"))
    return WorldProblem(q, _fmt(Fraction(total * num, den)), 4, "fraction_of", steps)


def t_percent_off(r: random.Random) -> WorldProblem:
    it = r.choice(("a jacket", "a bike", "a lamp", "a game", "a bag", "a watch"))
    price = r.choice((20, 40, 50, 60, 80, 100, 120, 150, 200))
    pct = r.choice((10, 20, 25, 30, 40, 50))
    q = f"{it.capitalize()} costs ${price} and is on sale for {pct}% off. What is the sale price, in dollars?"
    steps = (
        ("compute the discount", f"discount = {price} * {pct} / 100"),
        ("subtract the discount", f"sale = {price} - discount"),
        ("", "print(int(sale) if sale == int(sale) else sale)"),
    )
    return WorldProblem(q, _fmt(Fraction(price * (100 - pct), 100)), 4, "percent_off", steps)


def t_percent_of(r: random.Random) -> WorldProblem:
    k = r.choice((20, 40, 50, 60, 80, 120, 200, 300))
    pct = r.choice((5, 10, 15, 20, 25, 50, 75))
    q = f"A class of {k} students voted, and {pct}% of them chose chess. How many students chose chess?"
    steps = (
        (f"take {pct} percent of {k}", f"chess = {k} * {pct} / 100"),
        ("", "print(int(chess) if chess == int(chess) else chess)"),
    )
    return WorldProblem(q, _fmt(Fraction(k * pct, 100)), 4, "percent_of", steps)


def t_fraction_left(r: random.Random) -> WorldProblem:
    n = r.choice(NAMES)
    den = r.choice((3, 4, 5, 6))
    num = r.randint(1, den - 1)
    total = den * r.randint(3, 15)
    q = f"{n} had ${total}, spent {num}/{den} of it on food, and then spent $3 on a drink. How many dollars are left?"
    steps = (
        (f"money spent on food, {num}/{den} of the total", f"food = {total} * {num} // {den}"),
        ("subtract the food and the drink", f"left = {total} - food - 3"),
        ("", "print(left)"),
    )
    return WorldProblem(q, _fmt(total - Fraction(total * num, den) - 3), 4, "fraction_left", steps)


# ---- level 5: equations and multi-step ---------------------------------------------------------------------------
def t_linear(r: random.Random) -> WorldProblem:
    a, x, b = r.randint(2, 9), r.randint(-10, 15), r.randint(1, 30)
    c = a * x + b
    q = f"Solve for x: {a}x + {b} = {c}."
    steps = (
        ("move the constant to the right side", f"rhs = {c} - {b}"),
        ("divide by the coefficient of x", f"x = rhs // {a}"),
        ("", "print(x)"),
    )
    return WorldProblem(q, _fmt(x), 5, "linear", steps)


def t_age(r: random.Random) -> WorldProblem:
    n1, n2 = r.sample(NAMES, 2)
    y, k, later = r.randint(3, 15), r.randint(2, 4), r.randint(2, 10)
    q = f"{n1} is {k} times as old as {n2}. {n2} is {y} years old. How old will {n1} be in {later} years?"
    steps = (
        (f"{n1}'s age now", f"age_now = {k} * {y}"),
        ("add the years", f"age_later = age_now + {later}"),
        ("", "print(age_later)"),
    )
    return WorldProblem(q, _fmt(k * y + later), 5, "age", steps)


def t_sum_unknown(r: random.Random) -> WorldProblem:
    it = r.choice(ITEMS)
    x, d = r.randint(5, 40), r.randint(1, 20)
    total = 2 * x + d
    n1, n2 = r.sample(NAMES, 2)
    q = f"{n1} and {n2} have {total} {it} together. {n1} has {d} more than {n2}. How many {it} does {n2} have?"
    steps = (
        (f"remove {n1}'s extra {it}", f"rest = {total} - {d}"),
        ("split the rest equally", "x = rest // 2"),
        ("", "print(x)"),
    )
    return WorldProblem(q, _fmt(x), 5, "sum_unknown", steps)


def t_percent_increase(r: random.Random) -> WorldProblem:
    n = r.choice(NAMES)
    base = r.choice((20, 40, 50, 60, 80, 100, 200))
    pct = r.choice((10, 20, 25, 50))
    extra = r.randint(1, 20)
    q = f"{n} saved ${base}. The savings grew by {pct}%, and then {n} added ${extra}. How many dollars does {n} have now?"
    steps = (
        ("the growth", f"growth = {base} * {pct} / 100"),
        ("add the growth and the extra", f"total = {base} + growth + {extra}"),
        ("", "print(int(total) if total == int(total) else total)"),
    )
    return WorldProblem(q, _fmt(Fraction(base * (100 + pct), 100) + extra), 5, "percent_increase", steps)


TEMPLATES: dict[int, tuple[Template, ...]] = {
    1: (t_add, t_sub, t_mul, t_div),
    2: (t_add_sub, t_mul_add, t_cost, t_rate),
    3: (t_groups, t_two_buyers, t_weekly),
    4: (t_fraction_of, t_percent_off, t_percent_of, t_fraction_left),
    5: (t_linear, t_age, t_sum_unknown, t_percent_increase),
}


@dataclass(frozen=True)
class WorldConfig:
    """How many problems of which levels; every split is drawn from its own seeded stream."""

    seed: int = 0
    train: int = 400
    heldout: int = 200
    seed_sft: int = 48  # reference solutions for the bootstrap SFT (a disjoint split)
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    level_weights: tuple[float, ...] = field(default=(0.3, 0.25, 0.2, 0.15, 0.1))
    seed_levels: tuple[int, ...] = (1, 2)  # the bootstrap only shows the format on easy problems

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.level_weights):
            raise ValueError("levels and level_weights must have the same length")
        if not set(self.levels) <= set(TEMPLATES) or not set(self.seed_levels) <= set(TEMPLATES):
            raise ValueError(f"levels must be within {sorted(TEMPLATES)}")
        if min(self.train, self.heldout, self.seed_sft) < 0:
            raise ValueError("split sizes must be >= 0")


@dataclass(frozen=True)
class World:
    config: WorldConfig
    train: tuple[WorldProblem, ...]
    heldout: tuple[WorldProblem, ...]
    seed: tuple[WorldProblem, ...]


def _draw(
    r: random.Random, n: int, levels: tuple[int, ...], weights: tuple[float, ...], taken: set[str]
) -> list[WorldProblem]:
    out: list[WorldProblem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * max(n, 1):
            raise RuntimeError(f"could not draw {n} distinct problems; lower the split sizes")
        level = r.choices(levels, weights=weights)[0]
        p = r.choice(TEMPLATES[level])(r)
        if p.question in taken:
            continue
        taken.add(p.question)
        out.append(p)
    return out


def generate_world(config: WorldConfig | None = None) -> World:
    """Draw the three disjoint splits. Same config -> same problems, in the same order."""
    cfg = config or WorldConfig()
    taken: set[str] = set()
    # Held-out first, from its own stream, so growing the train split never changes the held-out problems.
    heldout = _draw(random.Random(f"{cfg.seed}-heldout"), cfg.heldout, cfg.levels, cfg.level_weights, taken)
    train = _draw(random.Random(f"{cfg.seed}-train"), cfg.train, cfg.levels, cfg.level_weights, taken)
    seed_weights = tuple(1.0 for _ in cfg.seed_levels)
    seed = _draw(random.Random(f"{cfg.seed}-seed"), cfg.seed_sft, cfg.seed_levels, seed_weights, taken)
    return World(cfg, tuple(train), tuple(heldout), tuple(seed))


def write_world(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Write the splits as normal problem files plus the seed SFT set ({prompt, completion} JSONL)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": out / "train.jsonl",
        "heldout": out / "heldout.jsonl",
        "seed": out / "seed.jsonl",
        "seed_sft": out / "seed_sft.jsonl",
    }
    write_problems_jsonl((p.to_problem("train") for p in world.train), paths["train"])
    write_problems_jsonl((p.to_problem("heldout") for p in world.heldout), paths["heldout"])
    write_problems_jsonl((p.to_problem("seed") for p in world.seed), paths["seed"])
    with paths["seed_sft"].open("w", encoding="utf-8") as fh:
        for p in world.seed:
            row = {
                "problem_id": problem_id_for(p.question),
                "prompt": build_prompt(p.question),
                "completion": p.reference_completion(),
            }
            fh.write(json.dumps(row) + "\n")
    summary = {
        "config": asdict(world.config),
        "counts": {"train": len(world.train), "heldout": len(world.heldout), "seed": len(world.seed)},
        "levels": {
            split: {str(lv): sum(1 for p in probs if p.level == lv) for lv in sorted(TEMPLATES)}
            for split, probs in (("train", world.train), ("heldout", world.heldout))
        },
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2))
    return paths

"""Deterministic fake policies, reward models and executors for tests, demos and benchmarks (no model, no torch).

Every fake policy draws a prompt's completions from `random.Random(seed)`, where `seed` is the per-prompt seed the
search passes (`generate(..., seeds=...)`) or, without one, a hash of (spec.seed, prompt). A prompt's completions thus
depend on nothing but the prompt and its seed: not on the batch, its order, or earlier calls. Fakes count their calls
(`calls`, `prompts`) so tests can check the batching.

Spec strings (`fake:ARG` through `rstar.models.registry`; `make_fake_policy(ARG)` / `make_fake_reward_model(ARG)`):

Policies
    random-int?max=20&p_final=0.4&p_error=0.0&seed=0
        Intermediate steps `x<d> = <int>` or a final code step printing a random int in [0, max]; the chance of a
        final step starts at p_final and grows with depth; p_error makes a step divide by zero.
    oracle?p_error=0.05&p_unparsable=0.02&p_final=0.35&max_steps=4&answers=PATH&p_correct=0.5&seed=0   (alias arith)
        Arithmetic over the numbers in the question: each step combines two of them (or earlier results) with
        + - * /, a final step prints the latest result. It solves one- and two-operation word problems (e.g.
        `rstar world` levels 1-2) often enough for search to find correct trajectories, and wrong ones often
        enough to give -1s. With answers=PATH (a problem file) it prints the gold answer with probability p_correct.
    scripted:PATH.json
        {"model_id": "...", "pick": "first" | "random",
         "rules": [{"depth": 0, "contains": "x = 1", "question_contains": "apples", "completions": [...]}, ...],
         "default": [...]}
        The first rule matching the prompt gives the completions (depth = steps already taken; `contains` is looked
        for in those steps, `question_contains` in the question). A completion is raw text (cut at the first stop
        string, as a server would) or {"text": ..., "finish_reason": "length"}. "first" returns the first n
        (cycling), "random" draws n with replacement from the seeded RNG.

Reward models (scores in (-1, 1))
    constant?value=0.0
    hash?seed=0&scale=0.9            a stable pseudo-random score per prefix
    oracle?answers=PATH&scale=0.9    +scale / -scale for a prefix whose last boxed answer is right / wrong against
                                     the problem file; a small hash score for prefixes without an answer
    scripted:PATH.json               {"rules": [{"contains": "...", "score": 0.5}], "default": 0.0}; the rule whose
                                     `contains` occurs LAST in the prefix wins (so the newest step decides)

Executors (Python objects only; no spec strings)
    InProcessExecutor   `exec` in a fresh namespace with captured stdout. NO isolation and NO time limit: only for
                        tests and demos that run code the test itself wrote or a fake policy generated.
    ScriptedExecutor    results from a function of the code (e.g. fail whenever a marker occurs).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from rstar.seeds import stable_seed
from rstar.types import Completion, ExecutionResult, PolicyLM, RewardModel, SamplingSpec
from rstar.verify.boxed import last_boxed
from rstar.verify.steps import CODE_OPEN, END_OF_CODE, END_OF_STEP

RawCompletion = str | Completion | Mapping[str, Any]


def split_prompt(prompt: str) -> tuple[str, str]:
    """(question, steps so far) of a search prompt built by `rstar.verify.steps.build_prompt` plus step texts."""
    head, sep, steps = prompt.partition(CODE_OPEN + "\n")
    if not sep:
        return prompt, ""
    question = head.split("<|user|>:\n", 1)[-1].split("\n<|assistant|>", 1)[0]
    return question.strip(), steps


def prompt_depth(prompt: str) -> int:
    """Steps already taken in a search prompt (each intermediate step ends with `<end_of_step>`)."""
    return split_prompt(prompt)[1].count(END_OF_STEP)


def to_completion(raw: RawCompletion, spec: SamplingSpec) -> Completion:
    """A backend-like `Completion` from raw model text: cut at the first stop string, capped at `spec.max_tokens`.

    Tokens are whitespace-separated words. Text with no stop string ends with "stop" (end of sequence) unless it is
    a mapping saying `finish_reason: "length"`.
    """
    if isinstance(raw, Completion):
        return raw
    finish = "stop"
    if isinstance(raw, Mapping):
        text = str(raw["text"])
        finish = str(raw.get("finish_reason", "stop"))
    else:
        text = raw
    cuts = [(text.find(s), s) for s in spec.stop if s in text]
    stop_reason = None
    if cuts:
        idx, stop_reason = min(cuts)
        text, finish = text[:idx], "stop"
    words = text.split()
    if len(words) > spec.max_tokens:
        # Keep the first max_tokens words (and their original spacing).
        pos = 0
        for w in words[: spec.max_tokens]:
            pos = text.index(w, pos) + len(w)
        text, finish, stop_reason, words = text[:pos], "length", None, words[: spec.max_tokens]
    if finish not in ("stop", "length"):
        raise ValueError(f"finish_reason must be 'stop' or 'length', got {finish!r}")
    return Completion(text=text, finish_reason=finish, stop_reason=stop_reason, num_tokens=max(1, len(words)))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------------
# Policies


class FakePolicy:
    """Base of the fake policies: per-prompt seeded sampling of raw texts, turned into `Completion`s."""

    def __init__(self, model_id: str, salt: int = 0) -> None:
        self._model_id = model_id
        self.salt = salt  # mixed into every seed: the spec's `seed=` changes the samples
        self.calls = 0
        self.prompts = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def sample(self, prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
        raise NotImplementedError

    def generate(
        self, prompts: Sequence[str], spec: SamplingSpec, *, seeds: Sequence[int] | None = None
    ) -> list[list[Completion]]:
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        self.calls += 1
        self.prompts += len(prompts)
        out = []
        for i, prompt in enumerate(prompts):
            seed = seeds[i] if seeds is not None else stable_seed(spec.seed, prompt)
            if self.salt:
                seed = stable_seed(self.salt, seed)
            raws = self.sample(prompt, spec.n, random.Random(seed))
            out.append([to_completion(r, spec) for r in raws])
        return out


class FunctionPolicy(FakePolicy):
    """A policy from a function `fn(prompt, n, rng) -> raw completions` (tests script trees with it)."""

    def __init__(
        self, fn: Callable[[str, int, random.Random], Sequence[RawCompletion]], model_id: str = "fake:function"
    ) -> None:
        super().__init__(model_id)
        self.fn = fn

    def sample(self, prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
        return self.fn(prompt, n, rng)


class RandomIntPolicy(FakePolicy):
    """Random integer steps; correct answers only by chance (see the module docstring)."""

    def __init__(self, max_int: int = 20, p_final: float = 0.4, p_error: float = 0.0, model_id: str = "") -> None:
        super().__init__(model_id or f"fake:random-int?max={max_int}")
        self.max_int, self.p_final, self.p_error = max_int, p_final, p_error

    def sample(self, prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
        d = prompt_depth(prompt)
        p_final = min(1.0, self.p_final * (1 + d))
        out: list[RawCompletion] = []
        for _ in range(n):
            k = rng.randint(0, self.max_int)
            if rng.random() < p_final:
                out.append(f"# Now print the final answer\nprint({k})\n{END_OF_CODE}")
            elif rng.random() < self.p_error:
                out.append(f"# Step {d + 1}: divide\nx{d + 1} = {k} / 0\n{END_OF_STEP}")
            else:
                out.append(f"# Step {d + 1}: pick a number\nx{d + 1} = {k}\n{END_OF_STEP}")
        return out


_NUMBER_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.]*[a-zA-Z_])")
_VAR_RE = re.compile(r"^(v\d+) = ", re.MULTILINE)
_OPS = (("+", "add"), ("-", "subtract"), ("*", "multiply"), ("/", "divide"))


class ArithmeticPolicy(FakePolicy):
    """Combines the question's numbers with + - * / step by step (see the module docstring, `oracle`)."""

    def __init__(
        self,
        *,
        p_error: float = 0.05,
        p_unparsable: float = 0.02,
        p_final: float = 0.35,
        max_steps: int = 4,
        answers: Mapping[str, str] | None = None,
        p_correct: float = 0.5,
        model_id: str = "fake:oracle",
    ) -> None:
        super().__init__(model_id)
        self.p_error, self.p_unparsable, self.p_final = p_error, p_unparsable, p_final
        self.max_steps, self.answers, self.p_correct = max_steps, dict(answers or {}), p_correct

    def sample(self, prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
        question, steps = split_prompt(prompt)
        numbers = list(dict.fromkeys(_NUMBER_RE.findall(question))) or ["1"]
        made = _VAR_RE.findall(steps)
        d = steps.count(END_OF_STEP)
        gold = self.answers.get(question.strip())
        pool = numbers + made
        # Every distinct next operation, shuffled: n candidates cover n different ones before any repeats. Once a
        # result exists, steps build on the latest one.
        combos = [
            (x, sym, verb, y)
            for x in pool
            for y in pool
            if x != y and (not made or made[-1] in (x, y))
            for sym, verb in _OPS
        ] or [(pool[0], "+", "add", "0")]
        rng.shuffle(combos)
        out: list[RawCompletion] = []
        k = 0
        for _ in range(n):
            if rng.random() < self.p_unparsable:
                out.append({"text": f"# Step {d + 1}: let me think about", "finish_reason": "length"})
            elif gold is not None and rng.random() < self.p_correct and (d >= 1 or rng.random() < 0.5):
                out.append(f"# Now print the final answer\nprint({gold!r})\n{END_OF_CODE}")
            elif made and (d >= self.max_steps or rng.random() < self.p_final * d):
                out.append(f"# Now print the final answer\nprint({made[-1]})\n{END_OF_CODE}")
            elif rng.random() < self.p_error:
                op = rng.choice("+-*/")
                out.append(f"# Step {d + 1}: use the earlier result\nv{d + 1} = w{d} {op} 2\n{END_OF_STEP}")
            else:
                x, sym, verb, y = combos[k % len(combos)]
                k += 1
                out.append(f"# Step {d + 1}: {verb} {x} and {y}\nv{d + 1} = {x} {sym} {y}\n{END_OF_STEP}")
        return out


class ScriptedPolicy(FakePolicy):
    """Completions from a rule table (see the module docstring, `scripted:PATH.json`)."""

    def __init__(self, script: Mapping[str, Any], model_id: str = "fake:scripted") -> None:
        super().__init__(str(script.get("model_id", model_id)))
        self.rules = list(script.get("rules", []))
        self.default = list(script.get("default", []))
        self.pick = str(script.get("pick", "first"))
        if self.pick not in ("first", "random"):
            raise ValueError(f"scripted policy: pick must be 'first' or 'random', got {self.pick!r}")
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, Mapping) or not isinstance(rule.get("completions"), list):
                raise ValueError(f"scripted policy: rule {i} needs a 'completions' list")

    def sample(self, prompt: str, n: int, rng: random.Random) -> Sequence[RawCompletion]:
        question, steps = split_prompt(prompt)
        depth = steps.count(END_OF_STEP)
        items = self.default
        for rule in self.rules:
            if "depth" in rule and int(rule["depth"]) != depth:
                continue
            if "contains" in rule and str(rule["contains"]) not in steps:
                continue
            if "question_contains" in rule and str(rule["question_contains"]) not in question:
                continue
            items = rule["completions"]
            break
        if not items:
            return []
        if self.pick == "random":
            return [rng.choice(items) for _ in range(n)]
        return [items[i % len(items)] for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------------
# Reward models


class FunctionRewardModel:
    """A reward model from a function of the prefix (tests script PPM values with it)."""

    def __init__(self, fn: Callable[[str], float], model_id: str = "fake:function-ppm") -> None:
        self._model_id = model_id
        self.fn = fn
        self.calls = 0
        self.prefixes = 0

    @property
    def model_id(self) -> str:
        return self._model_id

    def score(self, prefixes: Sequence[str]) -> list[float]:
        self.calls += 1
        self.prefixes += len(prefixes)
        return [float(self.fn(p)) for p in prefixes]


def hash_score(prefix: str, seed: int = 0, scale: float = 0.9) -> float:
    """A stable pseudo-random value in (-scale, scale) for a text."""
    return scale * (2.0 * (stable_seed(seed, prefix) / 0x7FFFFFFF) - 1.0)


def _scripted_score(rules: Sequence[Mapping[str, Any]], default: float) -> Callable[[str], float]:
    def fn(prefix: str) -> float:
        best, best_pos = default, -1
        for rule in rules:
            pos = prefix.rfind(str(rule["contains"]))
            if pos > best_pos:
                best, best_pos = float(rule["score"]), pos
        return best

    return fn


def _oracle_score(answers: Mapping[str, str], seed: int, scale: float) -> Callable[[str], float]:
    from rstar.search.mcts import default_grader

    grader = default_grader()

    def fn(prefix: str) -> float:
        question, steps = split_prompt(prefix)
        pred = last_boxed(steps)
        gold = answers.get(question.strip())
        if pred is None or gold is None:
            return 0.2 * hash_score(prefix, seed, 1.0)
        return scale if grader(gold, pred) else -scale

    return fn


# ----------------------------------------------------------------------------------------------------------------------
# Executors


class InProcessExecutor:
    """`exec` each program in a fresh namespace, capturing stdout. NOT a sandbox: tests and fake-policy demos only.

    No isolation (the program can touch the file system and the process), no time or memory limit. Errors are
    reported like the sandbox reports them: `error` is the exception's class name.
    """

    def __init__(self, max_output_chars: int = 10_000) -> None:
        self.max_output_chars = max_output_chars
        self.calls = 0
        self.programs = 0

    def run_batch(self, codes: Sequence[str]) -> list[ExecutionResult]:
        self.calls += 1
        self.programs += len(codes)
        return [self._run(c) for c in codes]

    def _run(self, code: str) -> ExecutionResult:
        buf = io.StringIO()
        t = time.perf_counter()
        ok, err, msg = True, None, ""
        try:
            compiled = compile(code, "<step>", "exec")
            with contextlib.redirect_stdout(buf):
                exec(compiled, {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit as exc:
            ok, err, msg = False, "SystemExit", str(exc)
        except Exception as exc:
            ok, err, msg = False, type(exc).__name__, str(exc)
        out = buf.getvalue()
        truncated = len(out) > self.max_output_chars
        if truncated:
            out = out[: self.max_output_chars]
            ok, err, msg = False, "OutputLimit", f"output exceeded {self.max_output_chars} characters"
        return ExecutionResult(
            ok=ok,
            stdout=out,
            error=err,
            error_message=msg,
            output_truncated=truncated,
            duration_ms=1000 * (time.perf_counter() - t),
        )


class ScriptedExecutor:
    """Results from a function of the program text; `ScriptedExecutor.failing_on("1/0")` fails programs with it."""

    def __init__(self, fn: Callable[[str], ExecutionResult]) -> None:
        self.fn = fn
        self.calls = 0
        self.programs = 0

    def run_batch(self, codes: Sequence[str]) -> list[ExecutionResult]:
        self.calls += 1
        self.programs += len(codes)
        return [self.fn(c) for c in codes]

    @classmethod
    def failing_on(cls, marker: str, stdout: str = "") -> ScriptedExecutor:
        def fn(code: str) -> ExecutionResult:
            if marker in code:
                return ExecutionResult(ok=False, error="ScriptedError", error_message=f"found {marker!r}")
            return ExecutionResult(ok=True, stdout=stdout)

        return cls(fn)


# ----------------------------------------------------------------------------------------------------------------------
# Spec strings


def _parse_arg(arg: str) -> tuple[str, dict[str, str]]:
    name, _, query = arg.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    return name.strip(), params


def _take(params: dict[str, str], key: str, cast: Callable[[str], Any], default: Any) -> Any:
    if key not in params:
        return default
    raw = params.pop(key)
    try:
        return cast(raw)
    except ValueError as exc:
        raise ValueError(f"fake spec parameter {key}={raw!r}: {exc}") from exc


def _no_leftovers(kind: str, params: Mapping[str, str]) -> None:
    if params:
        raise ValueError(f"unknown parameters for fake {kind}: {sorted(params)}")


def _load_script(path: str) -> dict[str, Any]:
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"script not found: {p}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"script {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"script {p} must hold a JSON object")
    return data


def _load_answers(path: str) -> dict[str, str]:
    from rstar.data.problems import load_problems

    problems, _ = load_problems(path)
    return {p.question.strip(): p.answer for p in problems}


def make_fake_policy(arg: str) -> PolicyLM:
    """A fake policy for the spec `fake:ARG` (names and parameters in the module docstring)."""
    name, params = _parse_arg(arg)
    model_id = f"fake:{arg}"
    if name == "scripted" or name.startswith("scripted:"):
        path = name.partition(":")[2] or params.pop("path", "")
        if not path:
            raise ValueError("fake:scripted needs a path: fake:scripted:PATH.json")
        return ScriptedPolicy(_load_script(path), model_id=model_id)
    if name == "random-int":
        seed = _take(params, "seed", int, 0)
        pol: FakePolicy = RandomIntPolicy(
            max_int=_take(params, "max", int, 20),
            p_final=_take(params, "p_final", float, 0.4),
            p_error=_take(params, "p_error", float, 0.0),
            model_id=model_id,
        )
    elif name in ("oracle", "arith"):
        seed = _take(params, "seed", int, 0)
        answers_path = params.pop("answers", None)
        pol = ArithmeticPolicy(
            p_error=_take(params, "p_error", float, 0.05),
            p_unparsable=_take(params, "p_unparsable", float, 0.02),
            p_final=_take(params, "p_final", float, 0.35),
            max_steps=_take(params, "max_steps", int, 4),
            answers=_load_answers(answers_path) if answers_path else None,
            p_correct=_take(params, "p_correct", float, 0.5),
            model_id=model_id,
        )
    else:
        raise ValueError(f"unknown fake policy {name!r}: use random-int, oracle (arith) or scripted:PATH.json")
    _no_leftovers(name, params)
    pol.salt = seed
    return pol


def make_fake_reward_model(arg: str) -> RewardModel:
    """A fake reward model for the spec `fake:ARG` (names and parameters in the module docstring)."""
    name, params = _parse_arg(arg)
    model_id = f"fake:{arg}"
    if name == "scripted" or name.startswith("scripted:"):
        path = name.partition(":")[2] or params.pop("path", "")
        if not path:
            raise ValueError("fake:scripted needs a path: fake:scripted:PATH.json")
        script = _load_script(path)
        rules = script.get("rules", [])
        if not isinstance(rules, list) or not all(
            isinstance(r, dict) and "contains" in r and "score" in r for r in rules
        ):
            raise ValueError("scripted reward model: rules must be objects with 'contains' and 'score'")
        return FunctionRewardModel(_scripted_score(rules, float(script.get("default", 0.0))), model_id=model_id)
    if name == "constant":
        value = _take(params, "value", float, 0.0)
        _no_leftovers(name, params)
        return FunctionRewardModel(lambda _p: value, model_id=model_id)
    if name == "hash":
        seed = _take(params, "seed", int, 0)
        scale = _take(params, "scale", float, 0.9)
        _no_leftovers(name, params)
        return FunctionRewardModel(lambda p: hash_score(p, seed, scale), model_id=model_id)
    if name == "oracle":
        seed = _take(params, "seed", int, 0)
        scale = _take(params, "scale", float, 0.9)
        answers_path = params.pop("answers", None)
        _no_leftovers(name, params)
        answers = _load_answers(answers_path) if answers_path else {}
        return FunctionRewardModel(_oracle_score(answers, seed, scale), model_id=model_id)
    raise ValueError(f"unknown fake reward model {name!r}: use constant, hash, oracle or scripted:PATH.json")

"""Prompt formats for evaluation: the policy's code-augmented steps, and plain chain-of-thought for other models.

A format turns a question into a prompt, says how to sample one step, and turns a completion into the next state of
a `Trajectory` (running code where the format needs it):

- `CodeFormat` (`--format code`): the code-augmented format of `rstar.verify.steps`, the one our policies are trained
  on. One model call per step, stopped on the step delimiters. A step that states `\\boxed{}` ends the trajectory with
  that answer; a final code step (`<end_of_code>`) runs the accumulated program in the executor and its printed result
  is the answer (the `<output>`/`<answer>` blocks are appended by the system, as at training time). Intermediate steps
  are executed only when `execute_intermediate` is set (their output is not shown to the model in this format, so
  running them only buys early termination on a code error).
- `CotFormat` (`--format cot`): plain chain-of-thought for base and instruct models that never saw our format, so they
  get a fair baseline. With a chat template (an HF backend whose tokenizer has one) the question plus an instruction
  to reason step by step and box the answer is rendered through it; otherwise the prompt is
  `Question: ...\\nAnswer: Let's think step by step ... \\boxed{}`. The answer is extracted from the whole output by
  the project's grader (`rstar.verify.answer.extract_answer`). For step-level search (beam) a CoT step is a paragraph
  (stop on a blank line), as in Hugging Face's search-and-learn recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from rstar.types import Completion, ExecutionResult, SamplingSpec
from rstar.verify.steps import (
    END_OF_CODE,
    STOP_STRINGS,
    accumulate_code,
    answer_from_output,
    build_prompt,
    parse_step,
    render_output_block,
)

FormatName = Literal["code", "cot"]
FORMATS: tuple[str, ...] = ("code", "cot")

COT_PLAIN_TEMPLATE = (
    "Question: {question}\nAnswer: Let's think step by step, and put the final answer within \\boxed{{}}.\n"
)
COT_CHAT_INSTRUCTION = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
# A base model that has answered tends to go on with the next exercise: stop it there.
COT_PLAIN_STOPS: tuple[str, ...] = ("\nQuestion:",)
COT_STEP_STOP = "\n\n"

Status = Literal["open", "exec", "answer", "no_answer", "code_error", "unparsable", "length", "max_depth"]


@dataclass(frozen=True)
class Trajectory:
    """One partial or finished solution: the prompt, the step texts so far, and what became of it.

    `status` is "open" while it can still grow; "exec" while a step waits for its code to run; a finished trajectory
    has "answer" (with `answer` set) or the reason it has none. `tokens` counts generated tokens along this path.
    """

    prompt: str
    steps: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    answer: str | None = None
    status: Status = "open"
    tokens: int = 0
    pending_code: str | None = None

    @property
    def text(self) -> str:
        return self.prompt + "".join(self.steps)

    @property
    def generated(self) -> str:
        return "".join(self.steps)

    @property
    def depth(self) -> int:
        return len(self.steps)

    @property
    def done(self) -> bool:
        return self.status not in ("open", "exec")


class TrajectoryFormat(Protocol):
    """What the rollout engine needs from a prompt format."""

    @property
    def name(self) -> str: ...

    def prompt(self, question: str) -> str: ...

    def spec(self, *, temperature: float, top_p: float, n: int) -> SamplingSpec: ...

    def extend(self, traj: Trajectory, completion: Completion) -> Trajectory: ...

    def observe(self, traj: Trajectory, result: ExecutionResult) -> Trajectory: ...


@dataclass(frozen=True)
class CodeFormat:
    """The code-augmented step format (see module docstring)."""

    max_step_tokens: int = 256
    execute_intermediate: bool = False
    name: str = "code"

    def prompt(self, question: str) -> str:
        return build_prompt(question)

    def spec(self, *, temperature: float, top_p: float, n: int) -> SamplingSpec:
        return SamplingSpec(
            n=n, temperature=temperature, top_p=top_p, max_tokens=self.max_step_tokens, stop=STOP_STRINGS
        )

    def extend(self, traj: Trajectory, completion: Completion) -> Trajectory:
        step = parse_step(completion)
        base = replace(traj, tokens=traj.tokens + completion.num_tokens)
        if step.kind == "intermediate":
            out = replace(base, steps=(*traj.steps, step.text), codes=(*traj.codes, step.code))
            if self.execute_intermediate:
                return replace(out, status="exec", pending_code=accumulate_code(out.codes))
            return out
        if step.kind == "final_code":
            codes = (*traj.codes, step.code)
            return replace(
                base, steps=(*traj.steps, step.text), codes=codes, status="exec", pending_code=accumulate_code(codes)
            )
        if step.kind == "answer":
            return replace(base, steps=(*traj.steps, step.text), answer=step.answer, status="answer")
        status: Status = "length" if completion.finish_reason == "length" else "unparsable"
        return replace(base, steps=(*traj.steps, step.text), status=status)

    def observe(self, traj: Trajectory, result: ExecutionResult) -> Trajectory:
        final = bool(traj.steps) and traj.steps[-1].rstrip().endswith(END_OF_CODE)
        if not result.ok:
            return replace(traj, status="code_error", pending_code=None)
        if not final:
            return replace(traj, status="open", pending_code=None)
        answer = answer_from_output(result.stdout)
        steps = (*traj.steps[:-1], traj.steps[-1] + render_output_block(result.stdout, answer))
        return replace(traj, steps=steps, answer=answer, status="answer" if answer else "no_answer", pending_code=None)


@dataclass(frozen=True)
class CotFormat:
    """Plain chain-of-thought (see module docstring). `stepwise` splits the output into paragraphs for beam search."""

    max_tokens: int = 1024
    max_step_tokens: int = 256
    stepwise: bool = False
    chat: Callable[[str], str] | None = None
    name: str = "cot"

    def prompt(self, question: str) -> str:
        if self.chat is not None:
            return self.chat(COT_CHAT_INSTRUCTION.format(question=question.strip()))
        return COT_PLAIN_TEMPLATE.format(question=question.strip())

    def stops(self) -> tuple[str, ...]:
        plain = () if self.chat is not None else COT_PLAIN_STOPS
        return (COT_STEP_STOP, *plain) if self.stepwise else plain

    def spec(self, *, temperature: float, top_p: float, n: int) -> SamplingSpec:
        max_tokens = self.max_step_tokens if self.stepwise else self.max_tokens
        return SamplingSpec(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=self.stops())

    def extend(self, traj: Trajectory, completion: Completion) -> Trajectory:
        from rstar.verify.answer import extract_answer

        paragraph_end = self.stepwise and completion.stop_reason == COT_STEP_STOP
        text = completion.text + (COT_STEP_STOP if paragraph_end else "")
        out = replace(traj, steps=(*traj.steps, text), tokens=traj.tokens + completion.num_tokens)
        if paragraph_end and "boxed" not in completion.text:
            return out
        answer = extract_answer(out.generated)
        if answer:
            return replace(out, answer=answer, status="answer")
        return replace(out, status="length" if completion.finish_reason == "length" else "no_answer")

    def observe(self, traj: Trajectory, result: ExecutionResult) -> Trajectory:  # CoT runs no code
        return replace(traj, status="open", pending_code=None)


def chat_renderer(policy: Any) -> Callable[[str], str] | None:
    """A function rendering one user message through the policy's chat template, or None when it has none.

    Looks for a Hugging Face tokenizer on the backend (`policy.tokenizer`) with a `chat_template`; servers reached
    over the completions API expose none, so they get the plain prompt.
    """
    tok = getattr(policy, "tokenizer", None)
    if tok is None or not getattr(tok, "chat_template", None) or not hasattr(tok, "apply_chat_template"):
        return None

    def render(user: str) -> str:
        text = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
        return str(text)

    return render


def make_format(
    name: str,
    *,
    policy: Any = None,
    stepwise: bool = False,
    max_step_tokens: int = 256,
    max_tokens: int = 1024,
    execute_intermediate: bool = False,
    use_chat_template: bool = True,
) -> TrajectoryFormat:
    """Build the format called `name` ("code" or "cot") for a policy."""
    if name == "code":
        return CodeFormat(max_step_tokens=max_step_tokens, execute_intermediate=execute_intermediate or stepwise)
    if name == "cot":
        chat = chat_renderer(policy) if use_chat_template and policy is not None else None
        return CotFormat(max_tokens=max_tokens, max_step_tokens=max_step_tokens, stepwise=stepwise, chat=chat)
    raise ValueError(f"unknown prompt format {name!r}: use one of {', '.join(FORMATS)}")

"""The code-augmented chain-of-thought step format: prompt, delimiters, parsing, accumulation, terminal answers.

A trajectory is a prompt followed by steps. Each step is natural language written as Python comments plus the Python
that carries it out, closed by a delimiter the policy is stopped on (see docs/format.md for a worked example):

    <|user|>:
    Tom has 3 boxes of 12 pencils and gives away 7. How many are left?
    <|assistant|>: Let's think step by step and solve the problem with code.
    <code>
    # Step 1: count the pencils in the boxes
    total = 3 * 12
    <end_of_step>
    # Step 2: subtract the pencils given away
    left = total - 7
    <end_of_step>
    # Now print the final answer
    print(left)
    <end_of_code>
    <output>
    29
    <end_of_output>
    <answer>
    The answer is \\boxed{29}
    <end_of_answer>

- An **intermediate step** ends with `<end_of_step>`. Its code runs (with all earlier steps' code before it) in the
  sandbox; a step whose accumulated code fails is dropped or ends the trajectory (search config).
- A **final code step** ends with `<end_of_code>`. The accumulated code runs; the last non-empty line it printed is the
  answer, and the system (not the model) appends the `<output>` and `<answer>` blocks. One model call per node, and
  the trained policy sees the whole block in its SFT data, so it learns what follows `<end_of_code>`.
- A step that writes `\\boxed{...}` itself (in a comment or an `<answer>` block) is terminal with that answer.
- A completion with no delimiter that hit the token limit is **unparsable**. One that ended with end-of-sequence is
  treated as a final code step when it has code that prints, else as unparsable.

The delimiters are plain text, not added special tokens: tokenizers split them the same way at training and at
generation time, no embedding matrix is resized, and any base model can be prompted with them. The policy is stopped
on `STOP_STRINGS`; backends return the text without the stop string and report which stop string ended it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rstar.types import Completion
from rstar.verify.boxed import last_boxed

END_OF_STEP = "<end_of_step>"
END_OF_CODE = "<end_of_code>"
END_OF_ANSWER = "<end_of_answer>"
CODE_OPEN = "<code>"
STOP_STRINGS: tuple[str, ...] = (END_OF_STEP, END_OF_CODE, END_OF_ANSWER)

PROMPT_TEMPLATE = (
    "<|user|>:\n{question}\n<|assistant|>: Let's think step by step and solve the problem with code.\n"
    + CODE_OPEN
    + "\n"
)

StepKind = Literal["intermediate", "final_code", "answer", "unparsable"]


@dataclass(frozen=True)
class Step:
    """One parsed step.

    `text` is the canonical text the step contributes to the trajectory (ends with its delimiter and a newline);
    `code` the Python it adds to the program (comments included: they are valid Python); `comment` its natural
    language; `answer` the boxed answer when the step states one.
    """

    kind: StepKind
    text: str
    code: str
    comment: str
    answer: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.kind != "intermediate"


def build_prompt(question: str, template: str = PROMPT_TEMPLATE) -> str:
    """The text the policy continues from for a fresh problem."""
    return template.format(question=question.strip())


def _split_comment_code(body: str) -> tuple[str, str]:
    comments = []
    for line in body.splitlines():
        s = line.strip()
        if s.startswith("#"):
            comments.append(s.lstrip("#").strip())
    return "\n".join(c for c in comments if c), body


def _stated_text(body: str) -> str:
    """The parts of a step that state things rather than compute them: comments, the `<output>`/`<answer>` blocks
    and plain-text lines. A `\\boxed{}` inside code (`print(f"\\boxed{{{x}}}")`) is something the program will print,
    not an answer the step states."""
    head, sep, tail = body.partition("<output>")
    if not sep:
        head, sep, tail = body.partition("<answer>")
    kept = []
    for line in head.split("\n"):
        s = line.strip()
        if s.startswith("#"):
            kept.append(s)
            continue
        k = s.find("\\boxed")
        if k < 0 or "print(" in s or any(q in s[:k] for q in "\"'="):
            continue  # code: the box is data the program handles
        kept.append(s)
    return "\n".join(kept) + "\n" + sep + tail


def _clean_body(text: str) -> str:
    body = text.replace("\r\n", "\n")
    # A model sometimes re-opens the code block or closes one it never opened; neither is Python.
    lines = [ln for ln in body.split("\n") if ln.strip() not in (CODE_OPEN, "</code>", "```python", "```")]
    return "\n".join(lines).strip("\n")


def parse_step(completion: Completion | str, stop_reason: str | None = None) -> Step:
    """Turn one policy completion into a `Step`.

    `completion` may be a `Completion` (its `stop_reason` and `finish_reason` are used) or raw text, in which case
    a delimiter still inside the text (backends that include the stop string) is honoured too. The canonical text is
    what the model wrote, trimmed of surrounding blank lines, plus its delimiter: feeding it back as the prefix of the
    next step reproduces exactly what the model saw while generating it.
    """
    if isinstance(completion, Completion):
        text, stop, finish = completion.text, completion.stop_reason, completion.finish_reason
    else:
        text, stop, finish = completion, stop_reason, "stop"
    if stop is not None and text.endswith(stop):
        text = text[: -len(stop)]
    # Raw text, or a backend that does not cut at the stop string: cut at the first delimiter.
    cut = [(text.find(d), d) for d in STOP_STRINGS if d in text]
    if cut:
        idx, stop = min(cut)
        text = text[:idx]
    delim = stop if stop in STOP_STRINGS else None

    body = _clean_body(text)
    boxed = last_boxed(_stated_text(body))
    if boxed is not None or "<answer>" in body or delim == END_OF_ANSWER:
        code_part = body.split("<output>")[0].split("<answer>")[0]
        comment, code = _split_comment_code(code_part.strip("\n"))
        canonical = body + "\n" + (delim + "\n" if delim else "")
        return Step("answer" if boxed is not None else "unparsable", canonical, code, comment, boxed)

    comment, code = _split_comment_code(body)
    if not body.strip():
        return Step("unparsable", (delim + "\n") if delim else "", "", "")
    if delim == END_OF_STEP:
        return Step("intermediate", body + "\n" + END_OF_STEP + "\n", code, comment)
    if delim == END_OF_CODE or (delim is None and finish == "stop" and "print(" in body):
        return Step("final_code", body + "\n" + END_OF_CODE + "\n", code, comment)
    # Hit max_tokens mid-step, or ended without a delimiter and without printing anything.
    return Step("unparsable", body + "\n", code, comment)


def accumulate_code(steps: Sequence[Step | str]) -> str:
    """The program a trajectory has built so far: every step's code, in order, separated by blank lines."""
    parts = [s.code if isinstance(s, Step) else s for s in steps]
    return "\n\n".join(p for p in parts if p.strip()) + "\n"


def answer_from_output(stdout: str) -> str | None:
    """The answer a final code step printed: the last non-empty line of its output (None when it printed nothing).

    A boxed answer printed by the code wins; `x = 5` / `Answer: 5` keep only the value.
    """
    boxed = last_boxed(stdout)
    if boxed is not None:
        return boxed
    lines = [ln.strip() for ln in stdout.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    last = lines[-1]
    for sep in ("answer is", "Answer:", "answer:"):
        if sep in last:
            tail = last.rsplit(sep, 1)[1].strip().lstrip(":").strip().rstrip(".")
            if tail:
                return tail
    # `x = 5` -> "5"; a relation (`x >= 5`, `a != b`) or a comparison (`a == b`) is itself the printed value
    parts = _ASSIGN_EQ.split(last)
    if len(parts) > 1 and parts[-1].strip():
        return parts[-1].strip().rstrip(".")
    return last


_ASSIGN_EQ = re.compile(r"(?<![<>!=])=(?!=)")


def new_output(stdout: str, parent_stdout: str) -> str:
    """What a step printed itself: its accumulated program's output minus what the earlier steps printed."""
    return stdout[len(parent_stdout) :] if stdout.startswith(parent_stdout) else stdout


MAX_OUTPUT_CHARS = 1024


def render_output_block(stdout: str, answer: str | None) -> str:
    """The system-written tail of a final code step: its printed output and the boxed answer."""
    out = stdout.strip()
    if len(out) > MAX_OUTPUT_CHARS:
        out = out[: MAX_OUTPUT_CHARS // 2] + "\n...\n" + out[-MAX_OUTPUT_CHARS // 2 :]
    tail = f"<output>\n{out}\n<end_of_output>\n"
    if answer is not None:
        tail += f"<answer>\nThe answer is \\boxed{{{answer}}}\n{END_OF_ANSWER}\n"
    return tail


def render_trajectory(question: str, step_texts: Sequence[str], template: str = PROMPT_TEMPLATE) -> str:
    """Prompt + the steps' texts: the exact text the policy saw (and, for a finished trajectory, its SFT target)."""
    return build_prompt(question, template) + "".join(step_texts)

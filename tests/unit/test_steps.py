"""rstar.verify.steps: the code-augmented CoT step format (docs/format.md)."""

from __future__ import annotations

import contextlib
import io

import pytest

from rstar.types import Completion
from rstar.verify.steps import (
    END_OF_ANSWER,
    END_OF_CODE,
    END_OF_STEP,
    PROMPT_TEMPLATE,
    STOP_STRINGS,
    Step,
    accumulate_code,
    answer_from_output,
    build_prompt,
    new_output,
    parse_step,
    render_output_block,
    render_trajectory,
)

STEP1 = "# Step 1: count the pencils in the boxes\ntotal = 3 * 12\n"
FINAL = "# Now print the final answer\nprint(total - 7)\n"


def _run(code: str) -> str:
    """What a program prints (trusted test code only; the product runs model code in the sandbox)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<trajectory>", "exec"), {})
    return buf.getvalue()


def test_stop_strings_are_the_three_delimiters() -> None:
    assert (
        STOP_STRINGS
        == (END_OF_STEP, END_OF_CODE, END_OF_ANSWER)
        == ("<end_of_step>", "<end_of_code>", "<end_of_answer>")
    )


# --------------------------------------------------------------------------------------------------------------------
# parse_step: every kind


def test_intermediate_step_from_a_backend_that_strips_the_stop_string() -> None:
    step = parse_step(Completion(text=STEP1, finish_reason="stop", stop_reason=END_OF_STEP))
    assert step.kind == "intermediate" and not step.is_terminal
    assert step.text == STEP1 + END_OF_STEP + "\n"
    assert step.code == STEP1.rstrip("\n")
    assert step.comment == "Step 1: count the pencils in the boxes"
    assert step.answer is None


def test_intermediate_step_from_raw_text_that_keeps_the_stop_string() -> None:
    step = parse_step(STEP1 + END_OF_STEP)
    assert step.kind == "intermediate"
    assert step.text == STEP1 + END_OF_STEP + "\n"


def test_a_backend_that_keeps_the_stop_string_in_a_completion() -> None:
    step = parse_step(Completion(text=STEP1 + END_OF_STEP, finish_reason="stop", stop_reason=END_OF_STEP))
    assert step.text == STEP1 + END_OF_STEP + "\n"


def test_raw_text_is_cut_at_the_first_delimiter() -> None:
    """A backend that did not stop: whatever the model wrote after the first delimiter is not part of this step."""
    step = parse_step(STEP1 + END_OF_STEP + "\n# Step 2\nleft = total - 7\n" + END_OF_STEP)
    assert step.kind == "intermediate" and "left" not in step.code


def test_final_code_step_ends_with_end_of_code() -> None:
    step = parse_step(Completion(text=FINAL, stop_reason=END_OF_CODE))
    assert step.kind == "final_code" and step.is_terminal
    assert step.text == FINAL + END_OF_CODE + "\n"
    assert "print(total - 7)" in step.code


def test_hallucinated_output_after_end_of_code_is_dropped() -> None:
    step = parse_step(FINAL + END_OF_CODE + "\n<output>\n999\n<end_of_output>\n<answer>\n\\boxed{999}\n")
    assert step.kind == "final_code" and step.answer is None and "999" not in step.text


def test_end_of_sequence_with_a_print_counts_as_final_code() -> None:
    step = parse_step(Completion(text=FINAL, finish_reason="stop", stop_reason=None))
    assert step.kind == "final_code"
    assert step.text.endswith(END_OF_CODE + "\n")


def test_end_of_sequence_without_a_print_is_unparsable() -> None:
    step = parse_step(Completion(text=STEP1, finish_reason="stop", stop_reason=None))
    assert step.kind == "unparsable" and step.is_terminal


def test_hitting_the_token_limit_is_unparsable_even_with_a_print() -> None:
    step = parse_step(Completion(text=FINAL, finish_reason="length", stop_reason=None))
    assert step.kind == "unparsable"
    assert step.text == FINAL  # no delimiter invented


def test_empty_completion_is_unparsable() -> None:
    assert parse_step(Completion(text="", stop_reason=END_OF_STEP)).kind == "unparsable"
    assert parse_step("   \n").kind == "unparsable"


def test_a_boxed_answer_in_a_comment_is_a_terminal_answer_step() -> None:
    step = parse_step(Completion(text="# The total is 29, so the answer is \\boxed{29}\n", stop_reason=END_OF_STEP))
    assert step.kind == "answer" and step.answer == "29" and step.is_terminal


def test_an_answer_block_is_a_terminal_answer_step() -> None:
    step = parse_step(Completion(text="<answer>\nThe answer is \\boxed{\\frac{1}{2}}\n", stop_reason=END_OF_ANSWER))
    assert step.kind == "answer" and step.answer == "\\frac{1}{2}"
    assert step.text.endswith(END_OF_ANSWER + "\n")


def test_an_answer_block_without_a_box_is_unparsable() -> None:
    step = parse_step(Completion(text="<answer>\nI am not sure\n", stop_reason=END_OF_ANSWER))
    assert step.kind == "unparsable" and step.answer is None


def test_a_box_inside_code_is_data_not_an_answer() -> None:
    """`print(f"\\boxed{{{x}}}")` prints the answer when run; it does not state one."""
    code = '# Now print the final answer\nprint(f"\\\\boxed{{{left}}}")\n'
    step = parse_step(Completion(text=code, stop_reason=END_OF_CODE))
    assert step.kind == "final_code" and step.answer is None
    step = parse_step(Completion(text='ans = "\\\\boxed{5}"\n', stop_reason=END_OF_STEP))
    assert step.kind == "intermediate"


def test_code_fences_and_carriage_returns_are_cleaned() -> None:
    step = parse_step(Completion(text="```python\r\nx = 1\r\n```\r\n", stop_reason=END_OF_STEP))
    assert step.kind == "intermediate" and step.code == "x = 1" and "\r" not in step.text


def test_an_unknown_stop_reason_is_not_a_delimiter() -> None:
    step = parse_step(Completion(text="x = 1\n", stop_reason="<end_of_output>"))
    assert step.kind == "unparsable"


def test_step_is_a_frozen_value() -> None:
    step = parse_step(STEP1 + END_OF_STEP)
    assert step == Step(
        "intermediate", STEP1 + END_OF_STEP + "\n", STEP1.rstrip("\n"), "Step 1: count the pencils in the boxes"
    )
    with pytest.raises(AttributeError):
        step.kind = "answer"  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------------------------
# Accumulating code and reading the output


def test_accumulate_code_runs_the_steps_in_order() -> None:
    steps: list[Step | str] = [parse_step(STEP1 + END_OF_STEP), "   ", parse_step(FINAL + END_OF_CODE)]
    program = accumulate_code(steps)
    assert program.index("total = 3 * 12") < program.index("print(total - 7)")
    assert program.endswith("\n")
    assert _run(program) == "29\n"


def test_accumulate_code_of_nothing_is_an_empty_program() -> None:
    assert accumulate_code([]) == "\n"
    assert _run(accumulate_code([])) == ""


@pytest.mark.parametrize(
    ("stdout", "answer"),
    [
        ("29\n", "29"),
        ("step 1\nstep 2\n\n  42  \n\n", "42"),
        ("x = 5\n", "5"),
        ("a = b = 3\n", "3"),
        ("The answer is: 12.\n", "12"),
        ("Answer: 7/2\n", "7/2"),
        ("x >= 5\n", "x >= 5"),  # a relation is the printed value, not an assignment
        ("a != b\n", "a != b"),
        ("True == True\n", "True == True"),
        ("the result \\boxed{17} and more\n", "17"),
        ("[1, 2, 3]\n", "[1, 2, 3]"),
        ("", None),
        ("\n  \n", None),
    ],
)
def test_answer_from_output(stdout: str, answer: str | None) -> None:
    assert answer_from_output(stdout) == answer


def test_new_output_is_what_the_step_printed_itself() -> None:
    assert new_output("a\nb\nc\n", "a\nb\n") == "c\n"
    assert new_output("c\n", "a\n") == "c\n"  # parent output not a prefix: keep everything


# --------------------------------------------------------------------------------------------------------------------
# Rendering


def test_render_output_block_with_and_without_an_answer() -> None:
    assert render_output_block("29\n", "29") == (
        "<output>\n29\n<end_of_output>\n<answer>\nThe answer is \\boxed{29}\n<end_of_answer>\n"
    )
    assert render_output_block("", None) == "<output>\n\n<end_of_output>\n"


def test_render_output_block_truncates_long_output_in_the_middle() -> None:
    out = "".join(f"line {i}\n" for i in range(1000))
    block = render_output_block(out, "x")
    body = block.split("<output>\n", 1)[1].split("\n<end_of_output>", 1)[0]
    assert len(body) <= 1024 + 5
    assert body.startswith("line 0") and body.endswith("line 999") and "\n...\n" in body


def test_build_prompt_uses_the_template() -> None:
    prompt = build_prompt("  What is 2+2?  ")
    assert prompt == PROMPT_TEMPLATE.format(question="What is 2+2?")
    assert prompt.startswith("<|user|>:\nWhat is 2+2?\n<|assistant|>:")
    assert prompt.endswith("<code>\n")
    assert build_prompt("q", "Q: {question}\n") == "Q: q\n"


def test_a_rendered_trajectory_parses_back_into_its_steps() -> None:
    """The canonical step text is exactly what the policy saw: render, split at the stop strings, parse again."""
    s1, s2 = parse_step(STEP1 + END_OF_STEP), parse_step(FINAL + END_OF_CODE)
    tail = render_output_block(_run(accumulate_code([s1, s2])), "29")
    text = render_trajectory(
        "Tom has 3 boxes of 12 pencils and gives away 7. How many are left?", [s1.text, s2.text + tail]
    )
    body = text.split("<code>\n", 1)[1]
    chunks = [
        c
        for c in body.replace(END_OF_CODE, END_OF_CODE + "\x00")
        .replace(END_OF_STEP, END_OF_STEP + "\x00")
        .split("\x00")
    ]
    assert parse_step(chunks[0]) == s1
    assert parse_step(chunks[1]) == s2
    assert "The answer is \\boxed{29}" in text and text.endswith(END_OF_ANSWER + "\n")

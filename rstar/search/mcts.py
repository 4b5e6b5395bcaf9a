"""MCTS over code-augmented steps for ONE problem, as a state machine the batched driver advances.

The search never calls a model itself. A `TreeSearch` says which node it wants expanded next
(`next_request()`), and the driver feeds it, in three phases, what the injected models returned for that node:

    req = ts.next_request()                          # select: UCT from the rollout's cursor down to a leaf
    programs = ts.take_completions(completions)      # expand: parse, de-duplicate; programs to execute
    prefixes = ts.take_results(exec_results)         # filter by execution, create children; prefixes to score
    ts.take_scores(ppm_scores)                       # evaluate: PPM init, grade terminals, back up, advance

so that the driver can batch each phase across many trees (one policy call, one executor call, one PPM call per
tick) while every tree advances on its own. Everything is deterministic given the config, the problem and what the
models return; the only randomness is the policy's, seeded per expansion by `expansion_seed(seed, problem, node)`.

The algorithm (docs/search.md has the reasoning and the paper / reference comparison):

- A rollout starts at the root and descends by UCT (`rstar.search.uct`) to a node not yet expanded; that node is
  expanded with `candidates` sampled next steps; the rollout then continues from the node it just expanded. It ends
  when an expansion creates an answer terminal (that terminal is evaluated and backed up at once, in the same tick),
  or when the node it just expanded has no selectable child (every child terminal: code errors, too deep, ...).
- Expansion keeps, in sampling order: the first copy of each distinct step; parsable steps whose accumulated code
  runs (failing ones are dropped, or kept under `code_errors="keep"`); at most one answer step (the first whose
  code ran and that produced an answer). A step at depth `max_depth` that is not an answer is terminal "max_depth".
- Evaluation: answer terminals get +1 / -1 by the grader against gold (mode "eval": their PPM score) and that value
  is backed up to the root. In modes "ppm" and "eval" each new non-terminal node starts with Q = its PPM score,
  counted as one visit, not backed up. A non-answer terminal (code error, unparsable, too deep, or a node whose
  expansion kept nothing) gets one -1 update on itself, not backed up (the reference's rule).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rstar.config import SearchConfig
from rstar.search.tree import Node, Tree
from rstar.search.uct import select_child
from rstar.seeds import stable_seed
from rstar.types import Completion, ExecutionResult, Problem
from rstar.verify.steps import Step, accumulate_code, answer_from_output, new_output, parse_step, render_output_block

Grader = Callable[[str, str], bool]


def expansion_seed(seed: int, problem_id: str, node_id: str) -> int:
    """The sampling seed of one expansion: `stable_seed(search seed, problem, node)`.

    Passed per prompt through `PolicyLM.generate(..., seeds=...)`, it makes a tree's samples independent of which
    other trees share its batch and of the order they are in.
    """
    return stable_seed(seed, problem_id, node_id)


# ----------------------------------------------------------------------------------------------------------------------
# Grading


def default_grader() -> Grader:
    """The project's one grader, `rstar.verify.answer.is_equiv(gold, pred)` (imported on first use: sympy is slow
    to import, and search tests with fake graders never need it)."""
    from rstar.verify.answer import is_equiv

    grader: Grader = is_equiv
    return grader


# ----------------------------------------------------------------------------------------------------------------------
# One tree


@dataclass(frozen=True, slots=True)
class ExpansionRequest:
    """A node one tree wants expanded: the policy continues `prompt` with `seed`."""

    node: int
    node_id: str
    prompt: str
    seed: int


@dataclass(slots=True)
class Candidate:
    """One sampled step on its way to becoming a child (or not)."""

    step: Step
    tokens: int
    duplicate: bool = False
    program: str | None = None  # accumulated code to execute; None when not executed
    result: ExecutionResult | None = None


@dataclass(slots=True)
class TreeCounters:
    """What one tree's expansions did with the candidates they sampled."""

    expansions: int = 0
    candidates: int = 0
    duplicates: int = 0
    unparsable: int = 0
    code_errors: int = 0
    extra_answers: int = 0
    executed: int = 0
    scored: int = 0

    def add(self, other: TreeCounters) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(slots=True)
class _Pending:
    node: int
    candidates: list[Candidate] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    score_targets: list[int] = field(default_factory=list)
    dead_reason: str | None = None


class TreeSearch:
    """The search state of one problem: its tree, rollout budget and rollout cursor.

    Not thread-safe; one driver advances it. Any exception a phase raises should be passed to `fail()` by the driver:
    the tree then stops, keeps what it built, and reports the error.
    """

    def __init__(
        self,
        problem: Problem,
        config: SearchConfig,
        *,
        grader: Grader,
        rollouts: int | None = None,
    ) -> None:
        self.problem = problem
        self.config = config
        self.grader = grader
        self.tree = Tree.new(problem)
        self.budget = config.rollouts if rollouts is None else rollouts
        if self.budget < 1:
            raise ValueError(f"rollouts for problem {problem.id} must be >= 1, got {self.budget}")
        self.rollouts_done = 0
        self.extra_granted = False
        self.counters = TreeCounters()
        self.error: str | None = None
        self.done = False
        self._cursor: int | None = None
        self._cursor_expansions = 0
        self._pending: _Pending | None = None

    # ------------------------------------------------------------------------------------------------------------------
    # Selection

    def next_request(self) -> ExpansionRequest | None:
        """The node to expand next (continuing the current rollout or starting the next), or None when finished."""
        if self.done:
            return None
        if self._pending is not None:
            raise RuntimeError("next_request() called while an expansion is still pending")
        nodes = self.tree.nodes
        while True:
            if self._cursor is None:
                if self.rollouts_done >= self.budget:
                    self._maybe_extend()
                if self.rollouts_done >= self.budget or not nodes[0].selectable:
                    self.done = True
                    return None
                self._cursor, self._cursor_expansions = 0, 0
            leaf = self._descend(self._cursor)
            if leaf is not None:
                self._cursor = leaf
                self._pending = _Pending(node=leaf)
                node = nodes[leaf]
                return ExpansionRequest(
                    node=leaf,
                    node_id=node.node_id,
                    prompt=self.tree.prefix(leaf),
                    seed=expansion_seed(self.config.seed, self.problem.id, node.node_id),
                )
            # Nothing selectable below the cursor: the rollout ends (it counts only if it expanded something).
            if self._cursor_expansions:
                self._end_rollout()
            else:
                self._cursor = None

    def _descend(self, start: int) -> int | None:
        nodes, cfg = self.tree.nodes, self.config
        i = start
        while True:
            n = nodes[i]
            if not n.selectable:
                return None
            if not n.expanded:
                return i
            child = select_child(nodes, n, cfg.c_uct, cfg.unvisited)
            if child is None:
                self.tree.mark_exhausted_upward(i)
                return None
            i = child

    def _end_rollout(self) -> None:
        self.rollouts_done += 1
        self._cursor = None
        self._cursor_expansions = 0

    def _maybe_extend(self) -> None:
        extra = self.config.extra_rollouts_if_unsolved
        if extra and not self.extra_granted and self.config.mode != "eval" and self.problem.answer:
            if not self.tree.solved:
                self.budget += extra
            self.extra_granted = True

    # ------------------------------------------------------------------------------------------------------------------
    # Expansion

    def take_completions(self, completions: Sequence[Completion]) -> list[str]:
        """Parse and de-duplicate the sampled steps of the pending node; return the programs to execute, in order."""
        pend = self._require_pending()
        node = self.tree.nodes[pend.node]
        parts = self.tree.program_parts(pend.node)
        seen: set[str] = set()
        programs: list[str] = []
        c = self.counters
        c.expansions += 1
        for comp in completions:
            step = parse_step(comp)
            cand = Candidate(step=step, tokens=int(comp.num_tokens))
            self.tree.tokens_generated += cand.tokens
            c.candidates += 1
            if step.text in seen:
                cand.duplicate = True
                c.duplicates += 1
            else:
                seen.add(step.text)
                if step.kind == "answer" and not _is_python(step.code):
                    # A stated answer written as prose: nothing to run (its text is not a program).
                    step = dataclasses.replace(step, code="")
                    cand.step = step
                if step.kind != "unparsable":
                    if step.code.strip():
                        cand.program = accumulate_code([*parts, step.code])
                        programs.append(cand.program)
                    else:  # nothing new to run: the parent's program and output stand
                        cand.result = ExecutionResult(ok=True, stdout=node.stdout)
            pend.candidates.append(cand)
        c.executed += len(programs)
        return programs

    def take_results(self, results: Sequence[ExecutionResult]) -> list[str]:
        """Attach the execution results, create the children; return the prefixes the PPM must score, in order."""
        pend = self._require_pending()
        to_run = [cand for cand in pend.candidates if cand.program is not None]
        if len(results) != len(to_run):
            raise RuntimeError(f"executor returned {len(results)} results for {len(to_run)} programs")
        for cand, res in zip(to_run, results, strict=True):
            cand.result = res
        self._build_children(pend)
        if self.config.uses_ppm:
            nodes = self.tree.nodes
            pend.score_targets = [
                i for i in pend.children if not nodes[i].is_terminal or nodes[i].terminal_reason == "answer"
            ]
        self.counters.scored += len(pend.score_targets)
        return [self.tree.prefix(i) for i in pend.score_targets]

    def _build_children(self, pend: _Pending) -> None:
        cfg, tree = self.config, self.tree
        parent = tree.nodes[pend.node]
        depth = parent.depth + 1
        too_deep = depth >= cfg.max_depth
        have_answer = False
        n_errors = n_unparsable = 0
        for cand in pend.candidates:
            if cand.duplicate:
                continue
            step = cand.step
            if step.kind == "unparsable":
                n_unparsable += 1
                if cfg.unparsable == "keep":
                    self._add_terminal(pend, cand, step.text, "unparsable")
                continue
            res = cand.result
            assert res is not None
            out = new_output(res.stdout, parent.stdout)
            if not res.ok:
                n_errors += 1
                if cfg.code_errors == "keep":
                    consecutive = parent.consecutive_errors + 1
                    reason = "code_error" if consecutive >= cfg.error_threshold else "max_depth" if too_deep else None
                    idx = tree.add_child(
                        pend.node,
                        step_text=step.text,
                        code=step.code,
                        output=_with_error(out, res),
                        stdout=parent.stdout,
                        exec_ok=False,
                        is_terminal=reason is not None,
                        terminal_reason=reason,
                        tokens=cand.tokens,
                        consecutive_errors=consecutive,
                    )
                    pend.children.append(idx)
                continue
            answer: str | None
            text = step.text
            if step.kind == "final_code":
                answer = answer_from_output(out)
                if answer is None:  # final code that printed nothing: no answer to grade
                    n_unparsable += 1
                    if cfg.unparsable == "keep":
                        self._add_terminal(pend, cand, text + render_output_block(out, None), "unparsable", res, out)
                    continue
                text = text + render_output_block(out, answer)
            else:
                answer = step.answer if step.kind == "answer" else None
            if answer is not None:
                if have_answer:
                    self.counters.extra_answers += 1
                    continue
                have_answer = True
                reason = "answer"
            else:
                reason = "max_depth" if too_deep else None
            idx = tree.add_child(
                pend.node,
                step_text=text,
                code=step.code,
                output=out,
                stdout=res.stdout,
                exec_ok=True,
                is_terminal=reason is not None,
                terminal_reason=reason,
                answer=answer,
                tokens=cand.tokens,
            )
            pend.children.append(idx)
        self.counters.unparsable += n_unparsable
        self.counters.code_errors += n_errors
        parent.expanded = True
        tree.expansions.append(pend.node)
        if not pend.children:
            pend.dead_reason = "code_error" if n_errors and n_errors >= n_unparsable else "unparsable"

    def _add_terminal(
        self,
        pend: _Pending,
        cand: Candidate,
        text: str,
        reason: str,
        res: ExecutionResult | None = None,
        out: str = "",
    ) -> None:
        parent = self.tree.nodes[pend.node]
        idx = self.tree.add_child(
            pend.node,
            step_text=text,
            code=cand.step.code,
            output=out,
            stdout=res.stdout if res is not None else parent.stdout,
            exec_ok=None if res is None else res.ok,
            is_terminal=True,
            terminal_reason=reason,
            tokens=cand.tokens,
        )
        pend.children.append(idx)

    # ------------------------------------------------------------------------------------------------------------------
    # Evaluation and back-up

    def take_scores(self, scores: Sequence[float]) -> None:
        """Apply PPM scores (one per prefix `take_results` returned), grade and back up, advance the rollout."""
        pend = self._require_pending()
        if len(scores) != len(pend.score_targets):
            raise RuntimeError(f"reward model returned {len(scores)} scores for {len(pend.score_targets)} prefixes")
        tree, cfg = self.tree, self.config
        nodes = tree.nodes
        for i, s in zip(pend.score_targets, scores, strict=True):
            value = float(s)
            if not math.isfinite(value):
                raise ValueError(f"reward model returned a non-finite score {s!r}")
            nodes[i].ppm_score = value
        ended = False
        for i in pend.children:
            ch = nodes[i]
            if ch.terminal_reason == "answer":
                assert ch.answer is not None
                gold = self.problem.answer
                ch.correct = bool(self.grader(gold, ch.answer)) if gold else None
                if cfg.mode == "eval":
                    assert ch.ppm_score is not None
                    reward = ch.ppm_score
                else:
                    reward = 1.0 if ch.correct else -1.0
                ch.reward = reward
                tree.backup(i, reward)
                ended = True
            elif ch.is_terminal:
                _penalise(ch)
            elif cfg.uses_ppm:
                assert ch.ppm_score is not None
                ch.visits, ch.value_sum = 1, ch.ppm_score
        node = nodes[pend.node]
        if pend.dead_reason is not None:
            node.is_terminal = True
            node.terminal_reason = pend.dead_reason  # type: ignore[assignment]
            _penalise(node)
        tree.mark_exhausted_upward(pend.node)
        self._pending = None
        self._cursor_expansions += 1
        if ended or not node.selectable:
            self._end_rollout()

    # ------------------------------------------------------------------------------------------------------------------
    # Failure and results

    def fail(self, exc: BaseException | str) -> None:
        """Stop this tree with an error; what it built so far is kept and reported."""
        msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.error = msg[:2000]
        self.done = True
        self._pending = None

    def _require_pending(self) -> _Pending:
        if self._pending is None:
            raise RuntimeError("no expansion is pending; call next_request() first")
        return self._pending

    def problem_row(
        self,
        *,
        wall_time_s: float,
        round_idx: int,
        policy_id: str,
        ppm_id: str | None,
    ) -> dict[str, Any]:
        """This problem's row of `PROBLEMS_SCHEMA`."""
        p = self.problem
        answers = self.tree.answer_terminals()
        return {
            "problem_id": p.id,
            "question": p.question,
            "gold": p.answer,
            "source": p.source,
            "level": p.level,
            "solved": any(n.correct for n in answers),
            "rollouts": self.rollouts_done,
            "correct_rollouts": sum(1 for n in answers if n.correct),
            "terminals": len(answers),
            "nodes": len(self.tree),
            "tokens_generated": self.tree.tokens_generated,
            "wall_time_s": wall_time_s,
            "mode": self.config.mode,
            "round": round_idx,
            "policy_id": policy_id,
            "ppm_id": ppm_id,
            "seed": self.config.seed,
            "error": self.error,
        }


def _is_python(code: str) -> bool:
    try:
        compile(code, "<step>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def _penalise(node: Node) -> None:
    """The reference's treatment of a terminal that is not an answer: one -1 update on the node itself."""
    node.reward = -1.0
    node.visits += 1
    node.value_sum -= 1.0


def _with_error(out: str, res: ExecutionResult) -> str:
    err = res.error or "Error"
    detail = f"{err}: {res.error_message}" if res.error_message else err
    return f"{out.rstrip()}\n{detail}" if out.strip() else detail


def rollouts_for_problem(problem: Problem, config: SearchConfig, overrides: Mapping[str, int] | None) -> int:
    """The rollout budget of one problem: the per-problem override when there is one, else the config's."""
    if overrides is not None and problem.id in overrides:
        return int(overrides[problem.id])
    return config.rollouts

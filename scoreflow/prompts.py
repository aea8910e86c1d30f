"""The generator's prompt, in the structure of the original's (SPEC section 3; H2, H3).

The wording is ours; the structure, rules and numbers follow the original
(``ScoreFlow/scripts/<DS>/conditions.py``): an opening line and the template workflow
(whose ``__init__`` binds all of the dataset's operators), an introduction of each
operator with its call format and a usage example, the problem under the dataset's
label (code "TASK:", MATH none, others "Question:"), the rules (size of the graph, the
encouragement to ensemble with several operators, loops and if/else, step-by-step
instructions that never ask for "another" answer, QA: every operator's output must
contribute, math/QA: the graph must differ from the template, nothing problem-specific,
what the workflow language allows), and the closing cue the completion continues from.

By default the prompt is sent as raw text (``generation.chat_template: false``), as the
original sends it to vLLM; the chat-formatted variant is a switch (``sampling``).
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.base import Benchmark, Problem


@dataclass(frozen=True)
class OperatorIntro:
    """How the generator prompt introduces one operator."""

    use: str
    call: str  # the call format the workflow must follow
    example: str


INTROS: dict[str, OperatorIntro] = {
    "Custom": OperatorIntro(
        "Asks an agent to work on the problem (given to it automatically) following an instruction you write; "
        "vary the instruction, e.g. \"Break the problem into smaller steps and solve each one.\"",
        "custom(instruction: str) -> str",
        'solution = await self.custom(instruction="Work through the problem step by step, explaining each step.")',
    ),
    "AnswerGenerate": OperatorIntro(
        "Answers the problem directly, with its reasoning.",
        "answer_generate() -> str",
        "solution = await self.answer_generate()",
    ),
    "CustomCodeGenerate": OperatorIntro(
        "Writes the code the task asks for, following an instruction you write; the instruction should ask for "
        "step-by-step thinking and must not repeat details of the task.",
        "code_generate(instruction: str) -> str",
        'code = await self.code_generate(instruction="Reason about the task step by step, then write the code.")',
    ),
    "Programmer": OperatorIntro(
        "Writes and runs Python code to compute the answer, from the problem and an analysis you pass in.",
        "programmer(analysis: str = 'None') -> str",
        "program_solution = await self.programmer(analysis=first_solution)",
    ),
    "ScEnsemble": OperatorIntro(
        "Looks at several solutions and picks the best one.",
        "sc_ensemble(solutions: List[str]) -> str",
        "best = await self.sc_ensemble(solutions=solution_list)",
    ),
    "Review": OperatorIntro(
        "Reviews a previous solution and writes it again, improved.",
        "review(pre_solution: str) -> str",
        "revised = await self.review(pre_solution=previous_solution)",
    ),
    "Test": OperatorIntro(
        "Runs the task's public test cases on a solution and repairs the solution where they fail.",
        "test(solution: str) -> str",
        "tested = await self.test(solution=code)",
    ),
}

# What the workflow language allows (docs/workflow_language.md, "What the generator is told").
LANGUAGE_RULES = (
    "Write only one `class Workflow` with `__init__(self, config, problem)` and `async def run_workflow(self)`; "
    "bind operators in `__init__` as in the template. In `run_workflow` use assignments to plain names, "
    "`list.append(...)`, `for _ in range(N)` with a constant N from 1 to {max_range} (at most two loops nested), "
    "`if`/`elif`/`else`, `try:`/`except Exception:` and `return` — no `while`, no `for x in a_list`, no other "
    "functions or classes. Call operators only as `x = await self.op(...)`, `return await self.op(...)`, "
    "`xs.append(await self.op(...))`, `[await self.op(...) for _ in range(N)]`, or together as "
    "`await asyncio.gather(self.a(...), self.b(...))`; assign a result before using it in a larger expression. "
    "You may read `self.problem`; values are strings, numbers and lists of strings; allowed helpers are len, str, "
    "max/min/sorted (key=len), sum, and .strip(), .lower(), .upper(), .replace(), .split(), .join() with constant "
    "arguments, and f-strings of names, x[0] or self.problem; no int(), enumerate, .format, dicts or slices."
)


def size_rule(benchmark: Benchmark) -> str:
    """The original's graph-size rule for the dataset (and the code datasets' loop bound)."""
    if benchmark.family != "code":
        return "The number of operator calls in the graph must be between 3 and 8."
    bound = "at most 7" if benchmark.name == "MBPP" else "fewer than 7"
    return f"The number of operator calls in the graph must be {bound}; a loop may run at most 3 iterations."


def problem_label(benchmark: Benchmark) -> str:
    """The label the problem text follows, per dataset as in the original."""
    if benchmark.family == "code":
        return "TASK: "
    if benchmark.name == "MATH":
        return ""
    return "Question: "


def operator_intros(benchmark: Benchmark) -> str:
    blocks = []
    for number, name in enumerate(benchmark.operators, start=1):
        intro = INTROS[name]
        blocks.append(
            f"{number}. {name}:\nWhat it does: {intro.use}\nCall it exactly like this: {intro.call}\n"
            f"For example:\n{intro.example}\nIts output can be passed to other operators or returned."
        )
    return "\n".join(blocks)


def rules(benchmark: Benchmark) -> list[str]:
    """The original's END_PROMPT rules, in our words, for this dataset."""
    qa, code = benchmark.family == "qa", benchmark.family == "code"
    thing = "task" if code else "problem"
    listed = [
        "Keep to the template's structure so the graph runs without errors. The modules `operator` and "
        "`create` are already imported: do not import them. Write out every instruction the graph uses, "
        "with no placeholders, and use only the operators introduced above.",
        "Using several operators at the right points tends to help: use loops to produce several solutions "
        "and ensemble them, and use control flow (if/else, loops) where it makes the graph stronger.",
        size_rule(benchmark) + " A richer graph can do better, but each step must pass on what the next needs.",
        "Instructions for the operators should ask the agent to think step by step. Never ask one operator "
        "for several answers, and since every agent works alone, never ask for \"another\", \"an alternative\", "
        "\"a different\" or \"the first/second\" answer.",
        LANGUAGE_RULES.format(max_range=benchmark.max_range),
    ]
    if qa:
        listed.insert(2, "Every operator's output must contribute to the value the graph returns; leave out "
                         "operators whose output would not.")
    if not code:
        listed.append("Your graph must improve on the template and differ from it.")
    listed.append(f"The graph must not contain any information from this particular {thing}: the {thing} "
                  "reaches the operators automatically (it is self.problem), and other agents will run the graph.")
    listed.append(f"Output only the graph, between <graph> and </graph>, with nothing from the {thing} in it.")
    return listed


def generator_prompt(benchmark: Benchmark, problem: Problem) -> str:
    """The whole prompt for one workflow for ``problem``; the completion continues after its last words."""
    qa, code = benchmark.family == "qa", benchmark.family == "code"
    thing = "task" if code else "problem"
    opening = "Your job is to write a workflow graph based on this template" + (
        " (you must change it):" if qa else ":")
    rule_text = "\n\n".join(f"**{rule}**" for rule in rules(benchmark))
    cue = "Here is the improved graph, with no information from the problem: " if qa else (
        f"Here is the graph, with no information from the {thing}: ")
    return (
        f"{opening}\n\n<graph>\n{benchmark.template_workflow.rstrip()}\n</graph>\n\n\n"
        "These are the operators you can use (only these; do not invent new ones):\n"
        f"{operator_intros(benchmark)}\n\n\n"
        f"Here is the {thing}. Your graph must not contain any specific information from it.\n"
        f"{problem_label(benchmark)}{problem.question.strip()}\n\n"
        f"Keep in mind:\n\n{rule_text}\n\n{cue}"
    )

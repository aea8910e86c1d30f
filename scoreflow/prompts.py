"""The generator's prompt (SPEC section 3): template, operators, the problem, the rules.

The wording is ours; the structure and rules follow the paper: the template workflow
and the descriptions of the benchmark's operators, then the problem (for QA only the
question, never the passage), then the rules — only these operators, no imports,
bounded graph size, step-by-step instructions that never ask for "another" answer,
nothing problem-specific in the graph, and only the ``<graph>`` block as output.
"""

from __future__ import annotations

from benchmarks.base import Benchmark, Problem
from scoreflow.operators import OPERATORS

# Graph size rules per family (SPEC section 3).
SIZE_RULES = {
    "math": "Use between 3 and 8 operator calls in total.",
    "code": "Use fewer than 7 operator calls in total, and loops of at most 3 iterations.",
    "qa": "Use at most 6 operator calls in total.",
}


def operator_lines(benchmark: Benchmark) -> str:
    """One line per operator the benchmark offers: how to bind it, call it, what it does."""
    lines = []
    for name in benchmark.operators:
        op = OPERATORS[name]
        lines.append(
            f"- {name}: bind `self.{op.attribute} = operator.{name}(config, problem)`, "
            f"call `{op.signature}`. {op.description}"
        )
    return "\n".join(lines)


def generator_prompt(benchmark: Benchmark, problem: Problem) -> str:
    """The user message asking for one workflow for ``problem``."""
    return f"""You design workflows for a team of language-model agents. A workflow is a small \
Python class: `__init__` binds operators, and `async def run_workflow(self)` awaits them and \
returns the final solution. Each operator asks an executor model to carry out one step.

Operators available:
{operator_lines(benchmark)}

A basic workflow for this kind of problem:
<graph>
{benchmark.template_workflow.rstrip()}
</graph>

Problem:
{problem.question.strip()}

Write a better workflow for this problem, following these rules:
- Use only the operators listed above, bound in `__init__` exactly as shown.
- Do not import anything; write nothing outside the `Workflow` class.
- {SIZE_RULES[benchmark.family]}
- Instructions must ask the executor to reason step by step; never ask for "another" or \
"a different" answer.
- Keep facts, numbers and answers of this particular problem out of the workflow: it must \
work for any problem of the same kind.
- Reply with the workflow only, between <graph> and </graph>."""

"""The checker's rule for code benchmarks (issue 15, part a): run_workflow may return only an
operator's output, so no workflow returns constant or hand-built code.

A constant program that forges a pass would score on every problem without one executor
call; with ``check_workflow(..., returns_operator_output=True)`` (passed wherever the
benchmark is a code benchmark: generation, the evaluate stage's pre-check, preferences)
such a workflow never becomes valid.
"""

from __future__ import annotations

import textwrap

import pytest

from benchmarks import get_benchmark
from scoreflow.preferences import TemplateFilter
from scoreflow.workflow import WorkflowRejected, check_workflow
from tests.data.original_style_workflows import WORKFLOWS

CODE_INIT = (
    "self.code_generate = operator.CustomCodeGenerate(config, problem)\n"
    "self.sc_ensemble = operator.ScEnsemble(config, problem)\n"
    "self.test = operator.Test(config, problem)\n"
    "self.review = operator.Review(config, problem)\n"
)
OPERATORS = ("CustomCodeGenerate", "ScEnsemble", "Test", "Review")
GENERATE = 'await self.code_generate(instruction="Write the function.")'


def code_workflow(body: str) -> str:
    return (
        "class Workflow:\n    def __init__(self, config, problem) -> None:\n"
        + textwrap.indent(CODE_INIT, " " * 8)
        + "\n    async def run_workflow(self):\n"
        + textwrap.indent(textwrap.dedent(body).strip().replace("GENERATE", GENERATE), " " * 8)
        + "\n"
    )


def check_code(body: str):  # type: ignore[no-untyped-def]
    return check_workflow(code_workflow(body), OPERATORS, returns_operator_output=True)


ACCEPTED = {
    "return await": "return GENERATE",
    "a name": "solution = GENERATE\nreturn solution",
    "through Test": "solution = GENERATE\nreturn await self.test(solution=solution)",
    "Test, positional": "solution = GENERATE\nreturn await self.test(solution)",
    "if/else": "solution = GENERATE\nif len(solution) > 10:\n    best = solution\nelse:\n    best = GENERATE\nreturn best",
    "reassigned in a branch": "solution = GENERATE\nif len(solution) == 0:\n    solution = GENERATE\nreturn solution",
    "loop and append": "found = []\nfor _ in range(3):\n    one = GENERATE\n    found.append(one)\n"
                       "best = await self.sc_ensemble(solutions=found)\nreturn await self.test(solution=best)",
    "gather and index": "many = await asyncio.gather(*[self.code_generate(instruction='x') for _ in range(3)])\n"
                        "return many[0]",
    "longest": "many = await asyncio.gather(self.code_generate(instruction='a'), self.code_generate(instruction='b'))\n"
               "return max(many, key=len)",
    "try/except": "solution = GENERATE\ntry:\n    tested = await self.test(solution=solution)\n"
                  "except Exception:\n    tested = solution\nreturn tested",
    "return in both branches": "solution = GENERATE\nif len(solution) > 3:\n    return solution\nelse:\n"
                               "    return await self.test(solution=solution)",
    "trimmed": "solution = GENERATE\nreturn solution.strip()",
    "review of a joined text": "a = GENERATE\nb = GENERATE\nreviewed = await self.review(pre_solution=a + b)\n"
                               "return reviewed",
    "an item of a list display": "a = GENERATE\nb = GENERATE\nreturn [a, b][1]",
    "list of outputs to the ensemble": "a = GENERATE\nb = GENERATE\nreturn await self.sc_ensemble(solutions=[a, b])",
}

FORGED = "import os\\nos.write(3, b'ok')\\nos._exit(0)"
REJECTED = {
    "a constant": (f'return "{FORGED}"', "not a constant"),
    "an f-string": ('solution = GENERATE\nreturn f"{solution}\\nprint(1)"', "not an f-string"),
    "a concatenation": ('solution = GENERATE\nreturn solution + "\\nimport os"', "computed with +"),
    "a name holding a constant": (f'code = "{FORGED}"\nreturn code', "'code', which may hold"),
    "a constant on one path": (f'code = GENERATE\nif len(code) > 5:\n    code = "{FORGED}"\nreturn code',
                               "'code', which may hold"),
    "a constant in the handler": (f'solution = GENERATE\ntry:\n    solution = await self.test(solution=solution)\n'
                                  f'except Exception:\n    solution = "{FORGED}"\nreturn solution', "may hold"),
    "+= onto an output": ('solution = GENERATE\nsolution += "\\nimport os"\nreturn solution', "may hold"),
    "a replace": ('solution = GENERATE\nreturn solution.replace("a", "b")', "not the value of solution.replace("),
    "Test of a constant": (f'return await self.test(solution="{FORGED}")', "Test may return its solution, which is a "
                                                                           "constant"),
    "Test of a hand-built name": (f'code = "{FORGED}"\nreturn await self.test(solution=code)', "Test may return"),
    "Test without a solution": ("return await self.test()", "which is nothing"),
    "ensemble with a constant": (f'a = GENERATE\nreturn await self.sc_ensemble(solutions=[a, "{FORGED}"])',
                                 "ScEnsemble may return its solutions"),
    "ensemble of a list with a constant appended": (f'found = []\nfound.append("{FORGED}")\n'
                                                    'return await self.sc_ensemble(solutions=found)', "ScEnsemble"),
    "an item of a hand-built list": (f'found = ["{FORGED}"]\nreturn found[0]', "found[0], an item of a list"),
    "the loop variable": ('for i in range(2):\n    solution = GENERATE\nreturn str(i)', "not the value of str(i)"),
    "a list": ("many = await asyncio.gather(self.code_generate(instruction='a'))\nreturn many", "'many', which"),
    "None": ("solution = GENERATE\nreturn", "not None"),
    "falling off the end": ("solution = GENERATE\nif len(solution) > 3:\n    return solution",
                            "can end without a return"),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_operator_outputs_are_accepted(name):
    check_code(ACCEPTED[name])


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_anything_else_is_rejected_with_the_reason(name):
    body, reason = REJECTED[name]
    check_workflow(code_workflow(body), OPERATORS)  # valid in the language: the rule alone rejects it
    with pytest.raises(WorkflowRejected) as caught:
        check_code(body)
    assert reason in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_rule_applies_only_where_asked():
    math = get_benchmark("GSM8K")
    source = math.template_workflow.replace("return solution", 'return "42"')
    check_workflow(source, math.operators, max_range=math.max_range)


def test_templates_and_the_original_style_code_corpus_pass_the_rule():
    for dataset in ("HumanEval", "MBPP"):
        bench = get_benchmark(dataset)
        check_workflow(bench.template_workflow, bench.operators, max_range=bench.max_range,
                       returns_operator_output=True)
    code = [entry for entry in WORKFLOWS if entry.family == "code"]
    assert len(code) >= 10
    for entry in code:
        check_workflow(entry.source, OPERATORS, max_range=3, returns_operator_output=True)


def test_generation_rejects_a_constant_program_for_code_only():
    from tests.test_generate import verdicts

    bench = get_benchmark("HumanEval")
    forged = "<graph>\n" + bench.template_workflow.replace("return solution", f'return "{FORGED}"')
    (verdict,) = verdicts([forged], dataset="HumanEval")
    assert not verdict.valid and verdict.reason.startswith("rejected: ")
    assert "a code workflow must return an operator's output, not a constant" in verdict.reason


def test_the_preference_filter_applies_the_rule_when_asked():
    bench = get_benchmark("HumanEval")
    forged = bench.template_workflow.replace("return solution", 'return "pass"')
    strict = TemplateFilter.from_template(bench.template_workflow, bench.operators, 0.5, returns_operator_output=True)
    loose = TemplateFilter.from_template(bench.template_workflow, bench.operators, 0.5)
    assert strict.similarity(forged) is None and loose.similarity(forged) is not None

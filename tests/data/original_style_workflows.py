'''Workflows written in the style of the original ScoreFlow generator (its prompt's template and
the idioms its Llama generator writes: the ``self.problem`` / ``self.config = create(config)``
constructor, a docstring, ``return await``, ``asyncio.gather``, string methods, ``try``/``except``,
loops up to 8 for math and QA, up to 3 for code). Written for this project's tests; every one
must be accepted by ``check_workflow`` and run through the interpreter.

Each entry: a name, the operator family (``math``, ``qa``, ``code``), the workflow, and the
number of executor requests it makes against ``tests/test_workflow_corpus.py``'s replies (one
reply that every operator can read; the code passes its public test at once, so Test sends
nothing), or None where the count is not asserted.
'''

from __future__ import annotations

from typing import NamedTuple


class CorpusWorkflow(NamedTuple):
    name: str
    family: str  # "math" (GSM8K, MATH), "qa" (DROP, HotpotQA), "code" (HumanEval, MBPP)
    source: str
    requests: int | None


MATH_INIT = '''class Workflow:
    def __init__(
        self,
        config,
        problem
    ) -> None:
        self.problem = problem
        self.config = create(config)
        self.custom = operator.Custom(self.config, self.problem)
        self.sc_ensemble = operator.ScEnsemble(self.config, self.problem)
        self.programmer = operator.Programmer(self.config, self.problem)
        self.review = operator.Review(self.config, self.problem)

    async def run_workflow(self):
        """
        This is a workflow graph.
        """
'''

QA_INIT = '''class Workflow:
    def __init__(
        self,
        config,
        problem
    ) -> None:
        self.problem = problem
        self.config = create(config)
        self.custom = operator.Custom(self.config, self.problem)
        self.answer_generate = operator.AnswerGenerate(self.config, self.problem)
        self.sc_ensemble = operator.ScEnsemble(self.config, self.problem)
        self.review = operator.Review(self.config, self.problem)

    async def run_workflow(self):
        """
        This is a workflow graph.
        """
'''

CODE_INIT = '''class Workflow:
    def __init__(
        self,
        config,
        problem
    ) -> None:
        self.problem = problem
        self.config = create(config)
        self.code_generate = operator.CustomCodeGenerate(self.config, self.problem)
        self.sc_ensemble = operator.ScEnsemble(self.config, self.problem)
        self.test = operator.Test(self.config, self.problem)

    async def run_workflow(self):
        """
        This is a workflow graph.
        """
'''

CODE_INIT_REVIEW = CODE_INIT.replace(
    "        self.test = operator.Test(self.config, self.problem)\n",
    "        self.test = operator.Test(self.config, self.problem)\n"
    "        self.review = operator.Review(self.config, self.problem)\n",
)


def _body(text: str) -> str:
    """A run_workflow body written flush left, indented under the method."""
    lines = text.strip("\n").splitlines()
    return "\n".join(("        " + line) if line.strip() else "" for line in lines) + "\n"


def _entry(name: str, family: str, init: str, body: str, requests: int | None = None) -> CorpusWorkflow:
    return CorpusWorkflow(name, family, init + _body(body), requests)


WORKFLOWS: list[CorpusWorkflow] = [
    # ------------------------------------------------------------ math: Custom, Programmer, ScEnsemble, Review
    _entry("math_gather_five_votes", "math", MATH_INIT, '''
solutions = await asyncio.gather(*[self.custom(instruction="Can you solve this problem by breaking it down into detailed steps and explaining the reasoning behind each step?") for _ in range(5)])
return await self.sc_ensemble(solutions=solutions)
''', requests=6),
    _entry("math_analysis_program_review", "math", MATH_INIT, '''
analysis = await self.custom(instruction="Explain how to solve the problem with clear reasoning for each step.")
program_solution = await self.programmer(analysis=analysis)
return await self.review(pre_solution=program_solution)
''', requests=3),
    _entry("math_programmer_reads_problem", "math", MATH_INIT, '''
program_solution = await self.programmer(analysis=self.problem)
reviewed = await self.review(pre_solution=program_solution)
return reviewed
''', requests=2),
    _entry("math_loop_eight_then_vote", "math", MATH_INIT, '''
solutions = []
for _ in range(8):
    solution = await self.custom(instruction="Solve the problem step by step and state the final answer clearly.")
    solutions.append(solution)
final_solution = await self.sc_ensemble(solutions=solutions)
return final_solution
''', requests=9),
    _entry("math_gather_custom_and_programmer", "math", MATH_INIT, '''
results = await asyncio.gather(
    self.custom(instruction="Break the problem into smaller steps and solve each one."),
    self.programmer(analysis=self.problem),
    self.custom(instruction="Solve the problem carefully, checking every calculation."),
)
return await self.sc_ensemble(solutions=results)
''', requests=4),
    _entry("math_try_programmer_fallback", "math", MATH_INIT, '''
try:
    solution = await self.programmer(analysis="Compute the answer exactly.")
except Exception:
    solution = await self.custom(instruction="Solve the problem step by step.")
return solution
''', requests=1),
    _entry("math_join_candidates", "math", MATH_INIT, '''
candidates = []
for i in range(3):
    candidate = await self.custom(instruction=f"Approach {i}: solve the problem step by step.")
    candidates.append(candidate)
summary = "\\n\\n".join(candidates)
final = await self.custom(instruction="Here are candidate solutions:\\n" + summary + "\\nCheck them and give the correct final answer.")
return final
''', requests=4),
    _entry("math_if_short_draft", "math", MATH_INIT, '''
draft = await self.custom(instruction="Solve the problem step by step.")
if len(draft.strip()) < 20:
    better = await self.review(pre_solution=draft)
else:
    better = await self.programmer(analysis=draft)
return better
''', requests=2),
    _entry("math_longest_of_four_reviewed", "math", MATH_INIT, '''
solutions = await asyncio.gather(*[self.custom(instruction="Think step by step and show every calculation.") for _ in range(4)])
longest = max(solutions, key=len)
return await self.review(pre_solution=longest)
''', requests=5),
    _entry("math_sorted_by_length_vote", "math", MATH_INIT, '''
solutions = await asyncio.gather(*[self.custom(instruction="Solve the problem with clear reasoning.") for _ in range(6)])
ranked = sorted(solutions, key=len, reverse=True)
shortlist = [ranked[0], ranked[1], ranked[-1]]
return await self.sc_ensemble(solutions=shortlist)
''', requests=7),
    _entry("math_fstring_problem_prompt", "math", MATH_INIT, '''
plan = await self.custom(instruction=f"Read this problem again: {self.problem}\\nWrite a plan for solving it.")
program_solution = await self.programmer(analysis=f"{plan}")
checked = await self.custom(instruction=f"A program gave this result:\\n{program_solution}\\nState the final answer.")
return await self.sc_ensemble(solutions=[program_solution, checked])
''', requests=4),
    _entry("math_error_word_check", "math", MATH_INIT, '''
program_solution = await self.programmer(analysis="Solve the problem with a short program.")
if "error" in program_solution.lower():
    solution = await self.custom(instruction="Solve the problem step by step without code.")
else:
    solution = await self.review(pre_solution=program_solution)
return solution
''', requests=2),
    _entry("math_clean_first_line", "math", MATH_INIT, '''
raw = await self.custom(instruction="Give the final answer on the first line, then your reasoning.")
lines = raw.replace("\\r", "").split("\\n")
first = lines[0].strip()
return await self.review(pre_solution=first + "\\n" + raw)
''', requests=2),
    _entry("math_nested_loop_attempts", "math", MATH_INIT, '''
attempts = []
for i in range(2):
    for j in range(3):
        attempt = await self.custom(instruction=f"Attempt {i}-{j}: solve the problem step by step.")
        attempts.append(attempt)
return await self.sc_ensemble(solutions=attempts)
''', requests=7),
    _entry("math_bare_except_review", "math", MATH_INIT, '''
solution = await self.custom(instruction="Solve the problem step by step.")
try:
    solution = await self.review(pre_solution=solution)
except:
    pass
return solution
''', requests=2),
    _entry("math_except_as_error_note", "math", MATH_INIT, '''
try:
    program_solution = await self.programmer(analysis="Write code that computes the answer.")
except Exception as e:
    program_solution = await self.custom(instruction="The program failed with: " + str(e) + f" ({e}). Solve the problem by hand.")
reasoning = await self.custom(instruction="Solve the problem step by step.")
return await self.sc_ensemble(solutions=[program_solution, reasoning])
''', requests=3),
    _entry("math_sum_of_lengths", "math", MATH_INIT, '''
first = await self.custom(instruction="Solve the problem step by step.")
second = await self.programmer(analysis=first)
total = sum([len(first), len(second)])
if total > 10:
    final = await self.sc_ensemble(solutions=[first, second])
else:
    final = first
return final
''', requests=3),
    _entry("math_min_and_upper", "math", MATH_INIT, '''
solutions = await asyncio.gather(self.custom(instruction="Solve it step by step."), self.custom(instruction="Solve it and verify the result."))
shortest = min(solutions, key=len)
note = "FINAL CHECK: ".upper() + shortest.upper()
return await self.review(pre_solution=note)
'''),
    _entry("math_plain_init_return_await", "math", '''class Workflow:
    def __init__(self, config, problem) -> None:
        self.custom = operator.Custom(config, problem)
        self.review = operator.Review(config, problem)

    async def run_workflow(self):
        """This is a workflow graph."""
''', '''
solution = await self.custom(instruction="Solve the problem step by step.")
return await self.review(pre_solution=solution)
''', requests=2),
    # ------------------------------------------------------------ QA: Custom, AnswerGenerate, ScEnsemble, Review
    _entry("qa_gather_answers_vote", "qa", QA_INIT, '''
answers = await asyncio.gather(*[self.answer_generate() for _ in range(5)])
return await self.sc_ensemble(solutions=answers)
''', requests=6),
    _entry("qa_analysis_answer_review", "qa", QA_INIT, '''
analysis = await self.custom(instruction="Identify the facts in the context that the question depends on.")
answer = await self.answer_generate()
reviewed = await self.review(pre_solution=f"{analysis}\\nAnswer: {answer}")
return reviewed
''', requests=3),
    _entry("qa_problem_in_instruction", "qa", QA_INIT, '''
facts = await self.custom(instruction=f"Read carefully: {self.problem}\\nList the facts needed to answer.")
answer = await self.custom(instruction="Using these facts, answer the question step by step:\\n" + facts)
return await self.sc_ensemble(solutions=[answer, facts])
''', requests=3),
    _entry("qa_loop_eight_custom", "qa", QA_INIT, '''
solutions = []
for i in range(8):
    solution = await self.custom(instruction=f"Answer the question step by step (reader {i}).")
    solutions.append(solution)
return await self.sc_ensemble(solutions=solutions)
''', requests=9),
    _entry("qa_try_review_keep_answer", "qa", QA_INIT, '''
answer = await self.answer_generate()
try:
    answer = await self.review(pre_solution=answer)
except Exception:
    answer = answer
return answer
''', requests=2),
    _entry("qa_gather_two_kinds", "qa", QA_INIT, '''
candidates = await asyncio.gather(
    self.answer_generate(),
    self.custom(instruction="Find the sentence in the context that answers the question, then answer."),
    self.custom(instruction="Reason step by step over the context, then answer."),
)
best = await self.sc_ensemble(solutions=candidates)
return best
''', requests=4),
    _entry("qa_join_evidence", "qa", QA_INIT, '''
evidence = []
for k in range(3):
    piece = await self.custom(instruction=f"Quote evidence item {k} from the context that bears on the question.")
    evidence.append(piece)
joined = "\\n\\n".join(evidence)
answer = await self.custom(instruction="Use the evidence below to answer step by step.\\n" + joined)
return answer
''', requests=4),
    _entry("qa_agreeing_answers", "qa", QA_INIT, '''
first = await self.answer_generate()
second = await self.answer_generate()
if first.strip().upper() == second.strip().upper():
    return first
return await self.sc_ensemble(solutions=[first, second])
''', requests=2),
    _entry("qa_first_fact_line", "qa", QA_INIT, '''
facts = await self.custom(instruction="List the relevant facts, one per line.")
first_fact = facts.split("\\n")[0]
answer = await self.custom(instruction=f"The key fact is: {first_fact}\\nAnswer the question step by step.")
return await self.review(pre_solution=answer)
''', requests=3),
    _entry("qa_shortest_of_sorted", "qa", QA_INIT, '''
answers = await asyncio.gather(*[self.answer_generate() for _ in range(3)])
ordered = sorted(answers)
shortest = min(ordered, key=len)
return await self.review(pre_solution=shortest)
''', requests=4),
    _entry("qa_except_as_retry", "qa", QA_INIT, '''
try:
    answer = await self.answer_generate()
except Exception as e:
    answer = await self.custom(instruction=f"The first attempt failed ({e}). Answer step by step.")
checked = await self.review(pre_solution=answer)
return checked
''', requests=2),
    _entry("qa_two_rounds_of_gather", "qa", QA_INIT, '''
candidates = []
for r in range(2):
    batch = await asyncio.gather(*[self.answer_generate() for _ in range(3)])
    candidates = candidates + batch
return await self.sc_ensemble(solutions=candidates)
''', requests=7),
    _entry("qa_clean_quotes", "qa", QA_INIT, '''
answer = await self.custom(instruction="Answer the question step by step, quoting the context.")
clean = answer.replace("\\"", "").strip()
short = await self.answer_generate()
return await self.sc_ensemble(solutions=[clean, short])
''', requests=3),
    _entry("qa_return_await_answer", "qa", QA_INIT, '''
context_notes = await self.custom(instruction="Summarise the parts of the context the question is about.")
return await self.review(pre_solution=context_notes)
''', requests=2),
    _entry("qa_count_and_lower", "qa", QA_INIT, '''
answers = await asyncio.gather(self.answer_generate(), self.answer_generate(), self.custom(instruction="Answer the question step by step."))
count = len(answers)
if count >= 3 and "unknown" not in answers[0].lower():
    final = await self.sc_ensemble(solutions=answers)
else:
    final = answers[0]
return final
''', requests=4),
    _entry("qa_plain_init_gather", "qa", '''class Workflow:
    def __init__(self, config, problem):
        self.answer_generate = operator.AnswerGenerate(config, problem)
        self.sc_ensemble = operator.ScEnsemble(config, problem)

    async def run_workflow(self):
        """Several independent answers, then the most consistent one."""
''', '''
answers = await asyncio.gather(*[self.answer_generate() for _ in range(4)])
return await self.sc_ensemble(solutions=answers)
''', requests=5),
    # ------------------------------------------------------------ code: CustomCodeGenerate, ScEnsemble, Test (Review)
    _entry("code_generate_then_test", "code", CODE_INIT, '''
solution = await self.code_generate(instruction="Can you analyze this problem step by step and generate the code?")
return await self.test(solution=solution)
''', requests=1),
    _entry("code_gather_three_vote_test", "code", CODE_INIT, '''
solutions = await asyncio.gather(*[self.code_generate(instruction="Analyze the task step by step, then write the function.") for _ in range(3)])
best = await self.sc_ensemble(solutions=solutions)
return await self.test(solution=best)
''', requests=4),
    _entry("code_loop_three_vote_test", "code", CODE_INIT, '''
solutions = []
for _ in range(3):
    solution = await self.code_generate(instruction="Think step by step about edge cases, then write the function.")
    solutions.append(solution)
best = await self.sc_ensemble(solutions=solutions)
tested = await self.test(solution=best)
return tested
''', requests=4),
    _entry("code_try_test_keep_solution", "code", CODE_INIT, '''
solution = await self.code_generate(instruction="Write the function step by step.")
try:
    tested = await self.test(solution=solution)
except Exception:
    tested = solution
return tested
''', requests=1),
    _entry("code_review_then_test", "code", CODE_INIT_REVIEW, '''
solution = await self.code_generate(instruction="Analyze the task step by step and generate the code.")
reviewed = await self.review(pre_solution=solution)
return await self.test(solution=reviewed)
''', requests=2),
    _entry("code_gather_two_instructions", "code", CODE_INIT, '''
pair = await asyncio.gather(
    self.code_generate(instruction="Write a straightforward solution step by step."),
    self.code_generate(instruction="Write a solution that handles edge cases, step by step."),
)
best = await self.sc_ensemble(solutions=pair)
return await self.test(solution=best)
''', requests=3),
    _entry("code_problem_in_fstring", "code", CODE_INIT, '''
solution = await self.code_generate(instruction=f"Task:\\n{self.problem}\\nThink step by step, then write the function.")
return await self.test(solution=solution)
''', requests=1),
    _entry("code_regenerate_if_empty", "code", CODE_INIT, '''
solution = await self.code_generate(instruction="Generate the code step by step.")
if len(solution.strip()) == 0:
    solution = await self.code_generate(instruction="Write the complete function.")
return await self.test(solution=solution)
''', requests=1),
    _entry("code_longest_candidate", "code", CODE_INIT, '''
candidates = await asyncio.gather(*[self.code_generate(instruction="Analyze the problem step by step and generate the code.") for _ in range(3)])
longest = max(candidates, key=len)
return await self.test(solution=longest)
''', requests=3),
    _entry("code_except_as_regenerate", "code", CODE_INIT, '''
solution = await self.code_generate(instruction="Generate the code step by step.")
try:
    solution = await self.test(solution=solution)
except Exception as e:
    solution = await self.code_generate(instruction="The tests could not run: " + str(e) + ". Write the function again.")
return solution
''', requests=1),
    _entry("code_join_then_review", "code", CODE_INIT_REVIEW, '''
drafts = []
for i in range(2):
    draft = await self.code_generate(instruction=f"Draft {i}: write the function step by step.")
    drafts.append(draft)
combined = "\\n\\n".join(drafts)
reviewed = await self.review(pre_solution=combined)
return await self.test(solution=reviewed)
''', requests=3),
    _entry("code_nested_loops_vote", "code", CODE_INIT, '''
solutions = []
for i in range(2):
    for j in range(2):
        solution = await self.code_generate(instruction=f"Plan {i}, check {j}: write the function step by step.")
        solutions.append(solution)
best = await self.sc_ensemble(solutions=solutions)
return await self.test(solution=best)
''', requests=5),
    _entry("code_strip_and_first", "code", CODE_INIT, '''
solutions = await asyncio.gather(self.code_generate(instruction="Write the function."), self.code_generate(instruction="Write the function carefully."))
first = solutions[0].strip()
tested = await self.test(solution=first)
return tested
''', requests=2),
]

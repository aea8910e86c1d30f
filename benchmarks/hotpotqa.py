"""HotpotQA (distractor): multi-hop questions over ten paragraphs; token F1 against the answer."""

from __future__ import annotations

from typing import Any

from benchmarks import scoring
from benchmarks.base import Problem, Score
from benchmarks.families import QABenchmark, f1_score, qa_input

# At inference the judge is skipped (score 0) when the output is this many times
# longer or shorter than the answer (SPEC section 2).
LENGTH_RATIO_LIMIT = 10


class HotpotQA(QABenchmark):
    name = "HotpotQA"
    file_stem = "hotpotqa"
    id_field = "_id"
    split_sizes = {"validate": 200, "test": 800}
    source_label = "context"

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        return ("_id", "question", "context", "answer")

    def to_problem(self, record: dict[str, Any], public_tests: dict[str, list[list[str]]]) -> Problem:
        context = context_text(record["context"])
        return Problem(
            id=str(record["_id"]),
            question=record["question"],
            input=qa_input(record["question"], "context", context),
            answer=record["answer"],
            extra={"source": context},
        )

    async def score(self, problem: Problem, output: str) -> Score:
        return f1_score(scoring.token_f1(output, problem.answer), output)

    def judge_precheck(self, problem: Problem, output: str) -> float | None:
        answer, produced = len(problem.answer.strip()), len(output.strip())
        if produced == 0 or produced >= LENGTH_RATIO_LIMIT * answer or LENGTH_RATIO_LIMIT * produced <= answer:
            return 0.0
        return None

    def trial_record(self) -> dict[str, Any]:
        return {
            "_id": "trial",
            "question": "What is A + B?",
            "context": [["A", ["A is 1."]], ["B", ["B is 2."]]],
            "answer": "3",
        }


def context_text(context: list[Any]) -> str:
    """The paragraphs as ``title: sentences`` lines, each ending in a newline (the original's text)."""
    return "".join(f"{title}: {''.join(sentences)}\n" for title, sentences in context)

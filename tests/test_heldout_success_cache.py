"""Held-out successes that cannot change (the teacher's, the initial student's at step 0) are remembered in
trainer.heldout_cache (default <output_dir>/heldout_success.json), keyed by the weights, the held-out set, the
sampling and the code (reopold_agents/evaluation/heldout_cache.py): a repeated run or a sibling seed reads
them, a changed key measures again."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import reopold_agents.run as run_mod
from reopold_agents.config import compose
from reopold_agents.config.schema import resolve_tiny
from reopold_agents.evaluation.heldout import HeldoutSet
from reopold_agents.evaluation.heldout import HeldoutScore
from reopold_agents.evaluation.heldout_cache import (CACHE_FILE, SuccessCache, code_digest, heldout_key, key_digest,
                                                   loaded_code_digest, tasks_digest, weights_digest)
from reopold_agents.lora import adapters_inert, apply_lora
from reopold_agents.metrics import read_metrics
from reopold_agents.roles import TeacherRole
from tasks.record import Task

SMALL = ["env=toolqa", "trainer.heldout_tasks=2", "engine.sampling.max_new_tokens=8", "env.max_turns=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def measured(monkeypatch):
    """Counts the teacher's held-out measurements (HeldoutSet.success_shown is the teacher's path)."""
    calls: list[int] = []
    real = HeldoutSet.success_shown

    def counting(self, label):
        calls.append(self.num_tasks)
        return real(self, label)

    monkeypatch.setattr(HeldoutSet, "success_shown", counting)
    return calls


def test_weights_digest_sees_every_byte_but_not_lora_adapters():
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.bias[1] = torch.nextafter(b.bias[1], torch.tensor(1.0))  # one ulp
    assert weights_digest(a) != weights_digest(b)
    assert weights_digest(a) != weights_digest(copy.deepcopy(a).to(torch.bfloat16))
    c = copy.deepcopy(a)
    c.register_buffer("lora_A_scale", torch.ones(2))  # adapter tensors are not the teacher's weights
    assert weights_digest(c) == weights_digest(a)
    c.register_buffer("scale", torch.ones(2))  # any other tensor is
    assert weights_digest(c) != weights_digest(a)


def test_tasks_digest_sees_questions_answers_and_meta():
    t = [Task(id="1", question="2+2?", answer="4")]
    assert tasks_digest(t) == tasks_digest([Task(id="1", question="2+2?", answer="4")])
    assert tasks_digest(t) != tasks_digest([Task(id="1", question="2+2?", answer="5")])
    assert tasks_digest(t) != tasks_digest([Task(id="1", question="2+2?", answer="4", meta={"k": 1})])


def test_cache_file_round_trip_and_damage(tmp_path, caplog):
    cache = SuccessCache(tmp_path / CACHE_FILE)
    key = {"weights_sha256": "ab", "sampling": {"max_new_tokens": 8}}
    assert cache.get(key) is None
    score = HeldoutScore(0.75, {"parallel": 0.5, "simple_python": 1.0})
    cache.put(key, score, 1.5)
    assert cache.get(key) == score
    assert cache.get({**key, "sampling": {"max_new_tokens": 9}}) is None
    saved = json.loads((tmp_path / CACHE_FILE).read_text())["results"]
    assert len(saved) == 1 and saved[0]["key"] == key and saved[0]["success"] == 0.75
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert cache.get(key) is None and "unreadable" in caplog.text
    cache.put(key, HeldoutScore(0.5), 1.0)  # a damaged file is replaced
    assert cache.get(key) == HeldoutScore(0.5)


def test_code_digest_sees_a_changed_source_file(tmp_path):
    for package in ("pkg", "other"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "parse.py").write_text("def parse(text):\n    return text\n")
    first = code_digest(tmp_path, ("pkg",))
    assert code_digest(tmp_path, ("pkg",)) == first
    (tmp_path / "other" / "parse.py").write_text("changed = True\n")  # not a listed package
    assert code_digest(tmp_path, ("pkg",)) == first
    (tmp_path / "pkg" / "parse.py").write_text("def parse(text):\n    return text.strip()\n")
    assert code_digest(tmp_path, ("pkg",)) != first
    assert len(code_digest()) == 64  # the project's own sources
    assert loaded_code_digest() == code_digest()  # as imported (the files did not change since)


def test_heldout_key_is_one_identity_on_each_entrys_tasks():
    """A model's identity (weights hash: seconds on a real model) is made once and joined with each
    entry's held-out set; two sets give two keys, the same set the same key."""
    from reopold_agents.config.env import EnvConfig

    identity = {"evaluated_as": "student", "weights_sha256": "ab"}
    a = [Task(id="1", question="2+2?", answer="4")]
    b = [Task(id="2", question="3+3?", answer="6")]
    env = EnvConfig()
    key_a, key_b = heldout_key(identity, env, a), heldout_key(identity, env, b)
    assert key_a["weights_sha256"] == key_b["weights_sha256"] == "ab" and key_a["heldout_tasks"] == 1
    assert key_digest(key_a) != key_digest(key_b)
    assert key_digest(key_a) == key_digest(heldout_key(dict(identity), EnvConfig(), list(a)))
    assert key_digest(heldout_key({**identity, "weights_sha256": "cd"}, env, a)) != key_digest(key_a)


def test_fresh_adapters_are_inert_and_compute_exactly_the_base(tok):
    """Only then may a LoRA student share its base's step-0 score: base(x) + 0, bit for bit."""
    from reopold_agents.config.lora import LoraConfig
    from reopold_agents.tiny import tiny_qwen2

    base = tiny_qwen2(tok, seed=0)
    plain = copy.deepcopy(base)
    adapted = apply_lora(base, LoraConfig(enabled=True, rank=4, alpha=8.0), "tiny")
    assert adapters_inert(adapted) and adapters_inert(plain)
    ids = torch.randint(10, len(tok), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, plain(input_ids=ids).logits)
    assert weights_digest(adapted.get_base_model()) == weights_digest(plain)
    with torch.no_grad():
        next(p for n, p in adapted.named_parameters() if "lora_B" in n)[0, 0] = 1e-3
    assert not adapters_inert(adapted)


def test_teacher_role_measures_once_per_key(tmp_path, measured):
    cfg = resolve_tiny(compose([*SMALL, f"trainer.output_dir={tmp_path}"]))
    first = TeacherRole(cfg).heldout_success()
    assert first is not None and measured == [2]
    again = TeacherRole(cfg).heldout_success()  # a repeated run: a fresh role, the same outputs folder
    assert again == first and measured == [2]
    saved = json.loads((tmp_path / CACHE_FILE).read_text())["results"]
    key = saved[0]["key"]
    assert key["heldout_tasks"] == 2 and key["sampling"]["max_new_tokens"] == 8 and key["heldout_env"]["seed"] == 100_003
    assert key["evaluated_as"] == "teacher" and len(key["code_sha256"]) == 64
    assert len(key["weights_sha256"]) == 64 and saved[0]["success"] == first["eval/teacher/toolqa/success"]
    # a changed key measures again: the sampling, the held-out set's size
    TeacherRole(resolve_tiny(compose([*SMALL, "engine.sampling.max_new_tokens=9", f"trainer.output_dir={tmp_path}"]))
                ).heldout_success()
    TeacherRole(resolve_tiny(compose([*SMALL, "trainer.heldout_tasks=3", f"trainer.output_dir={tmp_path}"]))
                ).heldout_success()
    assert measured == [2, 2, 3]
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())["results"]) == 3


def test_a_repeated_run_reads_the_teachers_success(tmp_path, measured):
    args = [*SMALL, "trainer.total_steps=1", "trainer.prompts_per_step=1", "trainer.group_size=2",
            f"trainer.output_dir={tmp_path / 'run'}"]
    first = run_mod.train(compose(args), progress=False)
    second = run_mod.train(compose(args), progress=False)
    assert measured == [2]  # the second run did not evaluate the teacher
    assert second.teacher_success == first.teacher_success is not None
    assert read_metrics(tmp_path / "run")[0]["eval/teacher_success"] == first.teacher_success


@pytest.fixture
def scored(monkeypatch):
    """Counts every held-out measurement (HeldoutSet.score: the student's evaluations and the teacher's)."""
    calls: list[int] = []
    real = HeldoutSet.score

    def counting(self, progress=None):
        calls.append(self.num_tasks)
        return real(self, progress)

    monkeypatch.setattr(HeldoutSet, "score", counting)
    return calls


@pytest.mark.parametrize("lora", [False, True])
def test_sibling_seeds_share_the_initial_students_score(tmp_path, scored, lora):
    """Two seeds (a LoRA student's seed draws different A matrices, still inert) naming one heldout_cache:
    the second measures neither the teacher nor the student at step 0, and logs the same step-0 numbers."""
    shared = tmp_path / "study" / "heldout_success.json"
    args = [*SMALL, "trainer.total_steps=1", "trainer.prompts_per_step=1", "trainer.group_size=2",
            f"trainer.heldout_cache={shared}", *(["model.lora.enabled=true", "model.lora.rank=4"] if lora else [])]
    run_mod.train(compose([*args, "trainer.seed=0", f"trainer.output_dir={tmp_path / 's0'}"]), progress=False)
    assert scored == [2, 2, 2]  # student at step 0, teacher, student after the step
    run_mod.train(compose([*args, "trainer.seed=1", f"trainer.output_dir={tmp_path / 's1'}"]), progress=False)
    assert scored == [2, 2, 2, 2]  # only the trained student
    first, second = (read_metrics(tmp_path / s)[0] for s in ("s0", "s1"))
    assert first == second and "eval/success" in first
    saved = json.loads(shared.read_text())["results"]
    assert sorted(r["key"]["evaluated_as"] for r in saved) == ["student", "teacher"]
    assert not (tmp_path / "s0" / CACHE_FILE).exists()  # the named file, not one beside the outputs

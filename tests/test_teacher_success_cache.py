"""The teacher's held-out success is remembered in <output_dir>/teacher_success.json, keyed by its weights,
the held-out set and the sampling (reopold_agents/evaluation/teacher_cache.py): a repeated run reads it, a
changed key measures again."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import reopold_agents.run as run_mod
from reopold_agents.config import compose
from reopold_agents.config.schema import resolve_tiny
from reopold_agents.evaluation.heldout import HeldoutSet
from reopold_agents.evaluation.teacher_cache import CACHE_FILE, SuccessCache, tasks_digest, weights_digest
from reopold_agents.metrics import read_metrics
from reopold_agents.roles import TeacherRole
from tasks.record import Task

SMALL = ["env=toolqa", "trainer.heldout_tasks=2", "engine.sampling.max_new_tokens=8", "env.max_turns=1"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    cache = SuccessCache.beside(tmp_path)
    key = {"teacher_weights_sha256": "ab", "sampling": {"max_new_tokens": 8}}
    assert cache.get(key) is None
    cache.put(key, 0.75, 1.5)
    assert cache.get(key) == 0.75
    assert cache.get({**key, "sampling": {"max_new_tokens": 9}}) is None
    saved = json.loads((tmp_path / CACHE_FILE).read_text())["results"]
    assert len(saved) == 1 and saved[0]["key"] == key and saved[0]["success"] == 0.75
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert cache.get(key) is None and "unreadable" in caplog.text
    cache.put(key, 0.5, 1.0)  # a damaged file is replaced
    assert cache.get(key) == 0.5


def test_teacher_role_measures_once_per_key(tmp_path, measured):
    cfg = resolve_tiny(compose([*SMALL, f"trainer.output_dir={tmp_path}"]))
    first = TeacherRole(cfg).heldout_success()
    assert first is not None and measured == [2]
    again = TeacherRole(cfg).heldout_success()  # a repeated run: a fresh role, the same outputs folder
    assert again == first and measured == [2]
    saved = json.loads((tmp_path / CACHE_FILE).read_text())["results"]
    key = saved[0]["key"]
    assert key["heldout_tasks"] == 2 and key["sampling"]["max_new_tokens"] == 8 and key["heldout_env"]["seed"] == 100_003
    assert len(key["teacher_weights_sha256"]) == 64 and saved[0]["success"] == first["eval/teacher/toolqa/success"]
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

"""Widening a tiny pair's head to a real vocabulary (reopold_agents/tiny/widen.py): the old logits stay
bit-identical, the new rows' probability stays under its bound (checked by the full softmax), and the
saved folder loads as a path ``model.student`` accepts."""

from __future__ import annotations

import pytest
import torch

from reopold_agents.tiny.widen import (MASS_BOUND, needed_scale, new_row_mass, unreachable_direction, widen_model,
                                       widen_pair, widen_report)


def test_direction_separates_states_and_refuses_when_none_can():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(400, 16, generator=gen) + 1.5 * torch.ones(16)  # a cloud off the origin
    unit = unreachable_direction(states)
    assert unit.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert (states @ unit).min().item() > 0
    with pytest.raises(ValueError, match="no direction separates"):
        unreachable_direction(torch.cat([states, -states]))  # the origin is inside: nothing separates


def test_scale_bounds_the_new_rows_mass_brute_force():
    """With rows ``-scale * u`` appended, the full softmax puts <= MASS_BOUND on them at every state, and a
    10 % smaller scale does not (the scale is the smallest that works)."""
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(200, 8, generator=gen) + torch.full((8,), 1.5)
    old = torch.randn(50, 8, generator=gen)
    unit = unreachable_direction(states)
    new_rows = 5000
    scale = needed_scale(states, states @ old.T, unit, new_rows)
    for factor, ok in ((1.0, True), (0.9, False)):
        weight = torch.cat([old, (-factor * scale * unit).expand(new_rows, -1)]).double()
        mass = new_row_mass(states.double(), weight, len(old))
        assert (mass.max().item() <= MASS_BOUND * 1.001) is ok, (factor, mass.max().item())


@pytest.fixture(scope="module")
def widened(tmp_path_factory):
    import os

    old = os.environ.get("REOPOLD_CACHE")
    os.environ["REOPOLD_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield widen_pair("tiny_math", 3000, demos=8)
    finally:
        if old is None:
            os.environ.pop("REOPOLD_CACHE")
        else:
            os.environ["REOPOLD_CACHE"] = old


def test_widened_pair_keeps_logits_generation_and_loads_by_path(widened):
    from reopold_agents.chat import encode_prompt
    from reopold_agents.models import load_model

    assert set(widened) == {"student", "teacher"}
    for role, folder in widened.items():
        wide, orig = load_model(str(folder), role), load_model("tiny_math", role)
        report = widen_report(folder)
        assert (report.rows_before, report.rows_after) == (1030, 3000)
        assert report.margin > 0 and report.scale > 0
        assert report.calibration_max_new_mass <= MASS_BOUND * 1.001
        # 16 calibration demonstrations only (the benchmark's use 256): on other text the new rows stay unlikely
        assert report.check_max_new_mass < 1e-3, report
        assert wide.model.get_output_embeddings().weight.shape[0] == 3000  # the head, tied to the embedding
        msgs = [{"role": "system", "content": "Solve it and box the answer."}, {"role": "user", "content": "What is 6 * 7 + 5?"}]
        ids = encode_prompt(wide.tokenizer, msgs, None).ids
        assert ids == encode_prompt(orig.tokenizer, msgs, None).ids  # the saved tokenizer is the project's
        x = torch.tensor([ids])
        with torch.no_grad():
            lw, lo = wide.model(x).logits, orig.model(x).logits
            assert torch.equal(lw[..., :1030], lo)
            assert torch.softmax(lw[0, -1], -1)[1030:].sum().item() < 1e-6
            gw = wide.model.generate(x, max_new_tokens=12, do_sample=False)
            go = orig.model.generate(x, max_new_tokens=12, do_sample=False)
        assert gw.tolist() == go.tolist()


def test_widen_pair_reuses_its_folder(widened):
    before = {role: (folder / "model.safetensors").stat().st_mtime_ns for role, folder in widened.items()}
    again = widen_pair("tiny_math", 3000, demos=8)
    assert again == widened
    assert {role: (folder / "model.safetensors").stat().st_mtime_ns for role, folder in again.items()} == before


def test_widen_refuses_a_narrower_head():
    from reopold_agents.tiny import build_tokenizer, tiny_qwen2

    model = tiny_qwen2(build_tokenizer(), hidden_size=32, num_layers=1, intermediate_size=64)
    with pytest.raises(ValueError, match="vocab_size: 1000 must exceed"):
        widen_model(model, 1000, [], [])

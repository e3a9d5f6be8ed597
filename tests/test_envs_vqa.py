"""VQA env: images in the observation (PIL or paths, resized by qwen-vl-utils) and the three scorers."""

from __future__ import annotations

import pytest
from PIL import Image

import reopold_agents as ra
from envs.demo import play_demonstration
from envs.scoring import match_choice, match_exact, match_numeric
from tasks import Task, generate


def test_synthetic_demonstrations_are_correct():
    env = ra.make_env("vqa", seed=0)
    kinds = set()
    for d in (1, 2, 3):
        for task in generate("vqa", size=20, seed=5, difficulty=d):
            demo = play_demonstration(env, task)
            assert demo.reward == 1.0, (task.question, task.answer, demo.info)
            kinds.add(task.meta["kind"])
    assert kinds == {"count", "number", "color", "bars"}


def test_image_from_path_is_loaded_resized_and_in_the_observation(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (640, 480), (0, 128, 0)).save(path)
    task = Task(id="p", question="What colour is the image?", answer="green", images=[str(path)])
    env = ra.make_env("vqa", tasks=[task], max_pixels=12544)
    obs, info = env.reset(seed=0)
    user = obs["messages"][1]
    assert [p["type"] for p in user["content"]] == ["image", "text"]
    img = obs["images"][0]
    assert img is user["content"][0]["image"] and img.mode == "RGB"
    w, h = img.size
    assert w % 28 == 0 and h % 28 == 0 and w * h <= 12544 and w > h  # aspect ratio kept
    assert img.getpixel((w // 2, h // 2)) == (0, 128, 0)
    _, r, term, _, info = env.step("It is \\boxed{Green}.")
    assert r == 1.0 and term and "exact" in info["why"]


def test_wrong_answer_and_truncation():
    task = generate("vqa", size=1, seed=0)[0]
    env = ra.make_env("vqa", tasks=[task])
    env.reset(seed=0)
    _, r, term, trunc, info = env.step("\\boxed{purple}")
    assert (r, term, trunc, info["success"]) == (0.0, True, False, False)
    env.reset(seed=0)
    _, r, term, trunc, _ = env.step("I see an image.")
    assert not term and not trunc
    obs, r, term, trunc, info = env.step("Nice image.")
    assert trunc and not term and r == 0.0 and "max_turns" in info["why"]
    assert len(obs["images"]) == 1


def test_multiple_choice_prompt_and_scoring():
    task = Task(id="c", question="Which bar is the tallest?", answer="blue", choices=["red", "blue", "green"],
                images=[Image.new("RGB", (56, 56))])
    env = ra.make_env("vqa", tasks=[task])
    obs, _ = env.reset(seed=0)
    assert "A. red\nB. blue\nC. green" in obs["messages"][1]["content"][1]["text"]
    for reply, reward in [("\\boxed{B}", 1.0), ("\\boxed{(B)}", 1.0), ("\\boxed{blue}", 1.0), ("\\boxed{A}", 0.0), ("\\boxed{D}", 0.0)]:
        env.reset(seed=0)
        assert env.step(reply)[1] == reward, reply


@pytest.mark.parametrize(
    "fn, args, ok",
    [
        (match_numeric, ("3", "3"), True),
        (match_numeric, ("3.0", "3"), True),
        (match_numeric, ("1,234", "1234"), True),
        (match_numeric, ("$12", "12"), True),
        (match_numeric, ("12.0000001", "12"), True),
        (match_numeric, ("12.1", "12"), False),
        (match_numeric, ("\\frac{1}{2}", "0.5"), True),
        (match_exact, ("The Red.", "red"), True),
        (match_exact, ("\\text{red}", "red"), True),
        (match_exact, ("dark red", "red"), False),
        (match_choice, ("C", "B", ["x", "y", "z"]), False),
        (match_choice, ("y", "B", ["x", "y", "z"]), True),
        (match_choice, ("B. y", "y", ["x", "y", "z"]), True),
    ],
)
def test_scorers(fn, args, ok):
    assert fn(*args).success is ok


def test_refuses_urls_and_taskless_images():
    env = ra.make_env("vqa", tasks=[Task(id="u", question="q", answer="a", images=["http://127.0.0.1/x.png"])])
    with pytest.raises(ValueError, match="no URLs"):
        env.reset(seed=0)
    env = ra.make_env("vqa", tasks=[Task(id="n", question="q", answer="a")])
    with pytest.raises(ValueError, match="no images"):
        env.reset(seed=0)
    with pytest.raises(ValueError, match="min_pixels"):
        ra.make_env("vqa", max_pixels=100, min_pixels=200)

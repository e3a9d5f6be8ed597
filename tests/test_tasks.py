"""Task sources: deterministic synthetic generators (answers checked independently) and file loaders."""

from __future__ import annotations

import io
import json
import re
from fractions import Fraction

import pytest
from PIL import Image

from tasks import Task, TaskLoadError, generate, load_tasks
from tasks.build_corpus import CORPUS_PATH, FACTS_PATH, build


@pytest.mark.parametrize("kind", ["math", "vqa", "toolqa"])
@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_generators_are_deterministic_per_seed(kind, difficulty):
    a = generate(kind, size=12, seed=11, difficulty=difficulty)
    b = generate(kind, size=12, seed=11, difficulty=difficulty)
    c = generate(kind, size=12, seed=12, difficulty=difficulty)
    key = lambda t: (t.id, t.question, t.answer, t.choices, t.demonstration, [im.tobytes() for im in t.images])  # noqa: E731
    assert [key(t) for t in a] == [key(t) for t in b]
    assert [(t.question, t.answer) for t in a] != [(t.question, t.answer) for t in c]
    assert a[3].question == generate(kind, size=100, seed=11, difficulty=difficulty)[3].question  # random access
    assert all(t.demonstration and t.meta["difficulty"] == difficulty for t in a)


def _eval_question(q: str) -> Fraction:
    """Brute-force reference: evaluate the arithmetic in a generated math question with Fractions."""
    m = re.match(r"What is (.*?)\?", q)
    if m:
        expr = re.sub(r"(\d+)/(\d+)", r"Fraction(\1, \2)", m.group(1))
        return Fraction(eval(expr, {"Fraction": Fraction}))  # generated text only: digits and + - * ( )
    nums = [int(x) for x in re.findall(r"\d+", q)]
    return Fraction(nums[0] + nums[1] if "more" in q else nums[0] - nums[1])


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_math_answers_match_a_reference(difficulty):
    for t in generate("math", size=60, seed=0, difficulty=difficulty):
        ref = _eval_question(t.question)
        ans = t.answer
        m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", ans)
        value = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1) if m else Fraction(int(ans))
        assert value == ref, t.question
        assert t.demonstration[0].endswith(f"\\boxed{{{ans}}}")
        assert len(t.question) < 120


def test_toolqa_answers_match_the_corpus():
    facts = {f["city"]: f for f in json.loads(FACTS_PATH.read_text())}
    docs = [json.loads(line) for line in CORPUS_PATH.read_text().splitlines()]
    for t in generate("toolqa", size=40, seed=0, difficulty=1):
        if t.meta["kind"] == "lookup":
            city = json.loads(t.demonstration[0][len("<tool_call>"):-len("</tool_call>")])["arguments"]["query"]
            doc = next(d for d in docs if d["title"] == city)
            assert t.answer in doc["text"] and t.answer in {str(v) for v in facts[city].values()}


def test_shipped_corpus_is_reproducible():
    docs, facts = build()
    assert [json.loads(line) for line in CORPUS_PATH.read_text().splitlines()] == docs
    assert json.loads(FACTS_PATH.read_text()) == facts
    titles = [d["title"].lower() for d in docs]
    assert len(set(titles)) == len(titles)


def test_task_validation():
    with pytest.raises(ValueError, match="question"):
        Task(id="x", question=" ", answer="1")
    with pytest.raises(ValueError, match="answer_type"):
        Task(id="x", question="q", answer="1", meta={"answer_type": "fuzzy"})
    with pytest.raises(ValueError, match="difficulty"):
        generate("math", difficulty=4)
    with pytest.raises(ValueError, match="unknown synthetic task kind"):
        generate("chess")


# ------------------------------------------------------------------------------------------ loaders


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_jsonl(tmp_path):
    p = _jsonl(tmp_path / "gsm8k.jsonl", [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "Big?", "answer": "It is big.\n#### 1,200"},
    ])
    tasks = load_tasks(p)
    assert [(t.id, t.answer) for t in tasks] == [("gsm8k-0", "7"), ("gsm8k-1", "1200")]
    assert tasks[0].meta["solution"] == "3 + 4 = 7"
    assert len(load_tasks(p, limit=1)) == 1


def test_math500_and_aime_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"problem": "Find $x$.", "solution": "So $x = \\boxed{\\frac{1}{2}}$.", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"},
        {"problem": "AIME one.", "solution": "Thus \\boxed{\\sqrt{2}}.", "answer": None, "subject": "Geometry", "level": 5, "unique_id": "aime-2"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "math500.parquet")
    tasks = load_tasks(tmp_path / "math500.parquet")
    assert [t.id for t in tasks] == ["test/algebra/1.json", "aime-2"]
    assert [t.answer for t in tasks] == ["\\frac{1}{2}", "\\sqrt{2}"]
    assert tasks[0].meta["subject"] == "Algebra" and tasks[0].meta["level"] == 2
    aime = _jsonl(tmp_path / "aime.jsonl", [{"ID": "2024-I-1", "Problem": "Compute.", "Answer": 204}])
    t = load_tasks(aime)[0]
    assert (t.id, t.question, t.answer) == ("2024-I-1", "Compute.", "204")


def test_mathvista_parquet_with_image_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(buf, format="PNG")
    rows = [
        {"pid": "1", "question": "Which is larger?", "image": "images/1.png", "decoded_image": {"bytes": buf.getvalue(), "path": None},
         "choices": ["A", "B"], "answer": "B", "question_type": "multi_choice", "answer_type": "text", "precision": None},
        {"pid": "2", "question": "How many?", "image": "images/2.png", "decoded_image": {"bytes": buf.getvalue(), "path": None},
         "choices": None, "answer": "3", "question_type": "free_form", "answer_type": "integer", "precision": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "testmini.parquet")
    tasks = load_tasks(tmp_path, split="testmini")
    assert [t.id for t in tasks] == ["1", "2"]
    assert tasks[0].choices == ["A", "B"] and tasks[0].answer_type == "choice"
    assert tasks[1].choices is None and tasks[1].answer_type == "numeric"
    assert tasks[0].images[0].getpixel((0, 0)) == (1, 2, 3)
    assert "image" not in tasks[0].meta and "decoded_image" not in tasks[0].meta


def test_geometry3k_with_relative_image_paths(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (10, 10)).save(tmp_path / "img" / "0.png")
    p = _jsonl(tmp_path / "geo.jsonl", [{"problem": "<image>Find x.", "images": ["img/0.png"], "choices": ["1", "2", "3", "4"], "answer": "C"}])
    t = load_tasks(p)[0]
    assert t.question == "Find x." and t.images == [str(tmp_path / "img" / "0.png")] and t.answer == "C"
    assert t.answer_type == "choice"
    bad = _jsonl(tmp_path / "geo_bad.jsonl", [{"problem": "Find x.", "images": ["img/missing.png"], "answer": "1"}])
    with pytest.raises(TaskLoadError, match="missing.png"):
        load_tasks(bad)


def test_tool_use_jsonl_keeps_demonstration(tmp_path):
    p = _jsonl(tmp_path / "tools.jsonl", [{
        "id": "t1", "question": "Capital?", "answer": "Paris", "tools": ["search"],
        "demonstration": ['<tool_call>{"name": "search", "arguments": {"query": "France"}}</tool_call>', "\\boxed{Paris}"],
    }])
    t = load_tasks(p)[0]
    assert t.meta["tools"] == ["search"] and len(t.demonstration) == 2


def test_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"question": "a?", "answer": "1"}]),
        "test": datasets.Dataset.from_list([{"question": "b?", "answer": "2"}, {"question": "c?", "answer": "3"}]),
    })
    ds.save_to_disk(str(tmp_path / "suite"))
    assert [t.answer for t in load_tasks(tmp_path / "suite")] == ["2", "3"]
    assert [t.question for t in load_tasks(tmp_path / "suite", split="train")] == ["a?"]
    with pytest.raises(TaskLoadError, match="split 'dev' not found"):
        load_tasks(tmp_path / "suite", split="dev")


def test_names_under_reopold_data_and_synthetic(tmp_path, monkeypatch):
    _jsonl(tmp_path / "tiny_suite.jsonl", [{"question": "q?", "answer": "1"}])
    monkeypatch.setenv("REOPOLD_DATA", str(tmp_path))
    assert load_tasks("tiny_suite")[0].answer == "1"
    synth = load_tasks("synthetic:math", size=5, seed=3, difficulty=2)
    assert len(synth) == 5 and synth[0].meta["difficulty"] == 2


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"question": "q"}\n', "no answer field"),
        ('{"answer": "1"}\n', "no question field"),
        ('{"question": "q", "answer": "1"}\n{oops\n', ":2: invalid JSON"),
        ("", "no tasks found"),
    ],
)
def test_loader_errors_name_the_problem(tmp_path, content, fragment):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(TaskLoadError, match=re.escape(fragment)):
        load_tasks(p)


def test_unknown_source_and_type(tmp_path):
    with pytest.raises(TaskLoadError, match="not found"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(TaskLoadError, match="unsupported file type"):
        load_tasks(tmp_path / "x.csv")

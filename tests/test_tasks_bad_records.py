"""Bad benchmark records fail at load time with a `TaskLoadError` naming the file and the record."""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.loaders import TaskLoadError, load_tasks

GOOD = {"question": "q?", "answer": "1"}


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    return buf.getvalue()


BAD_RECORDS = {
    "answer_dict": ({"question": "q", "answer": {"value": 3}}, "answer must be a string or a number"),
    "answer_list_of_two": ({"question": "q", "answer": [1, 2]}, "answer must be a string or a number"),
    "answer_bool": ({"question": "q", "answer": True}, "answer must be a string or a number"),
    "choices_number": ({"question": "q", "answer": "A", "choices": 5}, "choices must be a list"),
    "choices_broken_json": ({"question": "q", "answer": "A", "choices": "[\"a\", \"b\""}, "not a valid JSON list"),
    "choices_with_dict": ({"question": "q", "answer": "A", "choices": ["a", {"text": "b"}]}, "every option"),
    "choices_with_null": ({"question": "q", "answer": "A", "choices": ["a", None]}, "every option"),
    "choices_json_object": ({"question": "q", "answer": "A", "choices": "[{\"x\": 1}]"}, "every option"),
}


@pytest.mark.parametrize("name", list(BAD_RECORDS))
def test_bad_record_names_file_and_row(tmp_path, name):
    record, fragment = BAD_RECORDS[name]
    p = tmp_path / f"{name}.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(TaskLoadError, match=re.escape(fragment)) as info:
        load_tasks(p)
    assert f"{p} row 1" in str(info.value)


def test_infinite_answer_in_parquet(tmp_path):
    p = tmp_path / "inf.parquet"
    pq.write_table(pa.table({"question": ["a", "b"], "answer": [1.0, float("inf")]}), p)
    with pytest.raises(TaskLoadError, match=re.escape(f"{p} row 1: the answer must be a finite number")):
        load_tasks(p)


def test_truncated_image_file(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png_bytes())
    (tmp_path / "cut.png").write_bytes(_png_bytes()[:60])
    p = tmp_path / "vqa.jsonl"
    p.write_text("\n".join(json.dumps({"question": "colour?", "answer": "red", "image": f}) for f in ("ok.png", "cut.png")))
    with pytest.raises(TaskLoadError, match=re.escape(f"{p} row 1: image file")) as info:
        load_tasks(p)
    assert "cut.png" in str(info.value) and "cannot be decoded" in str(info.value)


def test_truncated_embedded_image_bytes(tmp_path):
    p = tmp_path / "vista.parquet"
    good, cut = _png_bytes(), _png_bytes()[:60]
    pq.write_table(pa.table({"pid": ["1", "2"], "question": ["q1", "q2"], "answer": ["a", "b"],
                             "decoded_image": [{"bytes": good, "path": None}, {"bytes": cut, "path": None}]}), p)
    with pytest.raises(TaskLoadError, match=re.escape(f"{p} row 1: the embedded image cannot be decoded")):
        load_tasks(p)


def test_good_variants_still_load(tmp_path):
    p = tmp_path / "ok.jsonl"
    rows = [{"question": "q", "answer": 2.0}, {"question": "q", "answer": ["x"]},
            {"question": "q", "answer": "B", "choices": "[\"a\", \"b\"]"}, {"question": "q", "answer": "A", "choices": {"A": 1, "B": 2}}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    tasks = load_tasks(p)
    assert [t.answer for t in tasks] == ["2", "x", "B", "A"]
    assert tasks[2].choices == ["a", "b"] and tasks[3].choices == ["1", "2"]

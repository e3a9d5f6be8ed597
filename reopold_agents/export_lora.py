"""Export a LoRA checkpoint as a plain HF model folder: the base student with the adapters merged in.

    python -m reopold_agents.export_lora <checkpoint> <out> [--student NAME] [--dtype float32]

A LoRA run's checkpoints (``model.lora.enabled``) hold peft's adapter files, not full weights. This loads
the base student as the run did (``reopold_agents.models.load_model``: a tiny pair, an HF id or path, a
packaged GGUF), applies the adapters with ``PeftModel.from_pretrained``, folds them in with
``merge_and_unload`` and writes weights, config and tokenizer (and processor) with ``save_pretrained``:
the folder loads with ``from_pretrained``, as ``model.student=<out>`` or in vLLM, with no peft.

``<checkpoint>`` is a step folder (``.../checkpoints/step_00000040``), its ``model/`` folder, or a run's
``checkpoints/`` folder (its newest checkpoint that verifies). The base is the ``model.student`` the run
trained, recorded in the adapter config (``base_model_name_or_path``); ``--student`` overrides it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reopold_agents.checkpoint import ADAPTER_CONFIG, CheckpointError, latest_checkpoint, verify_checkpoint
from reopold_agents.config.model import DTYPES


def adapter_folder(checkpoint: str | Path) -> Path:
    """The verified checkpoint's ``model/`` folder that holds the adapters; CheckpointError naming why not."""
    path = Path(checkpoint).expanduser()
    if path.name == "model" and (path.parent / "state.json").is_file():
        path = path.parent
    if not (path / "state.json").is_file():
        found = latest_checkpoint(path) if path.is_dir() else None
        if found is None:
            raise CheckpointError(f"{path}: not a checkpoint (no state.json) and no checkpoint under it")
        path = found
    verify_checkpoint(path)
    folder = path / "model"
    if not (folder / ADAPTER_CONFIG).is_file():
        raise CheckpointError(f"{folder}: no {ADAPTER_CONFIG}: a full-weights checkpoint (the run had no "
                              "model.lora); that folder is a plain HF model already")
    return folder


def export_merged(checkpoint: str | Path, out: str | Path, student: str | None = None,
                  dtype: str = "float32") -> Path:
    """Write the merged model of LoRA ``checkpoint`` into the new or empty folder ``out``; returns ``out``."""
    from peft import PeftModel

    from reopold_agents.models import load_model

    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {DTYPES}")
    folder = adapter_folder(checkpoint)
    target = Path(out).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target}: exists and is not an empty folder; pick a new output folder")
    base_name = student or json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{folder / ADAPTER_CONFIG}: names no base model (base_model_name_or_path); pass --student")
    loaded = load_model(base_name, "student", dtype, device="cpu")
    merged = PeftModel.from_pretrained(loaded.model, str(folder)).merge_and_unload()
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(target), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(target))
    if loaded.processor is not None:
        loaded.processor.save_pretrained(str(target))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reopold_agents.export_lora",
                                     description="Merge a LoRA checkpoint's adapters into a plain HF model folder.")
    parser.add_argument("checkpoint", help="a step folder, its model/ folder, or a run's checkpoints/ folder")
    parser.add_argument("out", help="the new (or empty) output folder")
    parser.add_argument("--student", default=None, help="the base model (default: the one the adapter config names)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to merge and save in")
    args = parser.parse_args(argv)
    try:
        out = export_merged(args.checkpoint, args.out, student=args.student, dtype=args.dtype)
    except (CheckpointError, FileExistsError, ValueError) as exc:
        print(f"export_lora: {exc}", file=sys.stderr)
        return 1
    print(f"merged model written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

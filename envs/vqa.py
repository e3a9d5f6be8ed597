"""Questions about images: counting, reading, colours, multiple choice (exact / numeric / choice scoring).

Task images may be PIL images or local file paths (URLs are refused: environments never touch the
network). Each is converted to RGB and resized with qwen-vl-utils' ``fetch_image`` (``smart_resize`` to a
multiple of 28 px with ``min_pixels <= h*w <= max_pixels``), so the pixels the student and the teacher see
match what a Qwen-VL processor expects and a small ``max_pixels`` keeps tiny VL models cheap.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from envs.base import TextEnv, format_choices
from reopold_agents.registry import register_env
from tasks.record import Task


def load_image(image: Any, *, min_pixels: int, max_pixels: int) -> Image.Image:
    """A resized RGB PIL image from a PIL image or a local path (``file://`` allowed)."""
    from qwen_vl_utils import fetch_image

    if isinstance(image, str):
        if "://" in image and not image.startswith("file://"):
            raise ValueError(f"image {image!r}: only local files and PIL images are allowed (no URLs)")
        path = image[len("file://") :] if image.startswith("file://") else image
        with Image.open(path) as f:
            f.load()
            image = f.copy()
    if not isinstance(image, Image.Image):
        raise TypeError(f"an image must be a PIL image or a local path, got {type(image).__name__}")
    return fetch_image({"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels})


@register_env("vqa")
class VQAEnv(TextEnv):
    """Single-answer questions about the task's images (``max_pixels``/``min_pixels`` bound each image)."""

    task_kind = "vqa"
    default_max_turns = 2
    default_system_prompt = "You are a helpful assistant. Look at the image and give the final answer as \\boxed{...}."

    def __init__(self, tasks: Any = None, *, max_pixels: int = 12544, min_pixels: int = 3136, **kwargs: Any) -> None:
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
        self.max_pixels, self.min_pixels = max_pixels, min_pixels
        super().__init__(tasks, **kwargs)

    def user_content(self, task: Task) -> list[dict[str, Any]]:
        if not task.images:
            raise ValueError(f"vqa task {task.id!r} has no images")
        parts: list[dict[str, Any]] = [
            {"type": "image", "image": load_image(im, min_pixels=self.min_pixels, max_pixels=self.max_pixels)}
            for im in task.images
        ]
        text = task.question
        if task.choices:
            text += "\nChoices:\n" + format_choices(task.choices) + "\nAnswer with the option letter."
        parts.append({"type": "text", "text": text})
        return parts

"""`bar_chart`: a tool that answers with an image (PIL), so a VLM agent can look at tool output."""

from __future__ import annotations

from PIL import Image, ImageDraw

from tools.base import ToolResult, register_tool

WIDTH, HEIGHT, MARGIN = 320, 200, 24
MAX_BARS = 20


@register_tool("bar_chart")
def bar_chart(values: list[float], labels: list[str] | None = None, title: str = "") -> ToolResult:
    """Draw a bar chart of the given values and return it as an image.

    Args:
        values: bar heights (1 to 20 non-negative numbers).
        labels: optional label under each bar (same length as values).
        title: optional title drawn at the top.
    """
    if not 1 <= len(values) <= MAX_BARS:
        return ToolResult.error(f"bar_chart: need 1 to {MAX_BARS} values, got {len(values)}")
    if any(v < 0 for v in values):
        return ToolResult.error("bar_chart: values must be non-negative")
    if labels is not None and len(labels) != len(values):
        return ToolResult.error(f"bar_chart: {len(labels)} labels for {len(values)} values")
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((MARGIN, 4), title[:40], fill="black")
    top, bottom = MARGIN, HEIGHT - MARGIN
    slot = (WIDTH - 2 * MARGIN) / len(values)
    peak = max(values) or 1.0
    for i, v in enumerate(values):
        x0 = MARGIN + i * slot + slot * 0.15
        x1 = MARGIN + (i + 1) * slot - slot * 0.15
        y0 = bottom - (bottom - top) * (v / peak)
        draw.rectangle([x0, y0, x1, bottom], fill=(66, 110, 200), outline="black")
        if labels is not None:
            draw.text((x0, bottom + 4), str(labels[i])[:6], fill="black")
    draw.line([MARGIN, bottom, WIDTH - MARGIN, bottom], fill="black")
    described = ", ".join(f"{l}={v:g}" for l, v in zip(labels or [str(i + 1) for i in range(len(values))], values))
    return ToolResult(text=f"bar chart ({len(values)} bars: {described})", images=[img])

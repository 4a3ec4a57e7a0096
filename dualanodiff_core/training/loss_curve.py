"""A training loss curve drawn with PIL alone (no plotting library): raw losses in grey, their running
mean over a tenth of the steps in blue, the step and loss ranges written on the axes."""
from __future__ import annotations


def loss_curve(losses: list, width: int = 512, height: int = 256, total_steps: int | None = None):
    """An RGB PIL image of ``losses`` (one per step); ``total_steps`` fixes the x axis of an unfinished run."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 48, width - 8, 8, height - 20
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    steps = max(total_steps or 0, len(losses), 1)
    if not losses:
        draw.text((left + 8, top + 8), "no steps yet", fill=(0, 0, 0))
        return image
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0

    def point(i, value):
        x = left + (right - left) * (i + 1) / steps
        return x, bottom - (bottom - top) * (value - low) / span

    window = max(1, len(losses) // 10)
    running, total = [], 0.0
    for i, value in enumerate(losses):
        total += value - (losses[i - window] if i >= window else 0.0)
        running.append(total / min(i + 1, window))
    for values, colour in ((losses, (190, 190, 190)), (running, (30, 90, 200))):
        if len(values) > 1:
            draw.line([point(i, v) for i, v in enumerate(values)], fill=colour, width=1 if colour[0] > 100 else 2)
        else:
            x, y = point(0, values[0])
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    draw.text((2, top), f"{high:.3g}", fill=(0, 0, 0))
    draw.text((2, bottom - 10), f"{low:.3g}", fill=(0, 0, 0))
    draw.text((left, bottom + 4), "0", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 4), f"step {steps}", fill=(0, 0, 0))
    draw.text((left + 8, top + 4), f"loss, step {len(losses)}: {losses[-1]:.4f} (mean of last {window}: "
              f"{running[-1]:.4f})", fill=(30, 90, 200))
    return image

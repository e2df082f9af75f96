"""The experiment report's pictures, drawn with Pillow alone (no plotting library in the engine's dependencies): loss
curves on one chart, and a labelled grid of samples per run."""

import math
from collections.abc import Sequence
from functools import cache

from PIL import Image, ImageDraw, ImageFont

# matplotlib's tab10, so the chart reads like the usual ones.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

LOSS_SIZE = (1000, 560)
_PLOT = (70, 40, 740, 500)  # left, top, right, bottom of the axes box; the legend is to its right
_TICKS = 6
# Diffusion losses jump with each step's random timestep: beyond this many steps a moving average is drawn over
# the faint raw curve, or the chart is a smear.
SMOOTH_ABOVE = 20

# Sample grid: a title strip, a label column for the step, one cell per prompt x seed, a legend line per prompt.
ROW_LABEL_WIDTH = 72
HEADER_HEIGHT = 40
LINE_HEIGHT = 16


@cache
def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError):  # Pillow built without FreeType: its bitmap font, one size only
        return ImageFont.load_default()


def _tint(colour: str, amount: float) -> tuple[int, int, int]:
    """`colour` mixed with white, `amount` of the colour kept."""
    rgb = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return tuple(round(255 - (255 - c) * amount) for c in rgb)


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start, so the curve starts at step 1)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _nice_ticks(low: float, high: float, count: int) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) spanning [low, high], about `count` of them."""
    if high <= low:
        return [low]
    rough = (high - low) / (count - 1)
    power = 10 ** math.floor(math.log10(rough))
    spacing = next(f * power for f in (1, 2, 5, 10) if f * power >= rough)
    first = math.ceil(low / spacing - 1e-9) * spacing
    return [first + i * spacing for i in range(int((high - first) / spacing + 1e-9) + 1)]


def loss_chart(series: dict[str, Sequence[float]], title: str = "training loss per step") -> Image.Image:
    """Every run's per-step loss (step 1 first) on one pair of axes, with a legend; runs without a loss are left
    out of the axes but listed in the legend as such."""
    image = Image.new("RGB", LOSS_SIZE, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = _PLOT
    font = _font()
    drawn = {name: list(losses) for name, losses in series.items() if losses}
    longest = max((len(losses) for losses in drawn.values()), default=1)
    window = max(2, longest // 20)
    smooth = longest > SMOOTH_ABOVE
    if smooth:
        title += f" (faint: each step; bold: mean of the last {window})"
    draw.text((left, 12), title, fill="black", font=_font(14))

    values = [loss for losses in drawn.values() for loss in losses]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    low, high = low - pad, high + pad
    first, last = 1, max(longest, 2)

    def point(step: int, loss: float) -> tuple[float, float]:
        x = left + (step - first) / (last - first) * (right - left)
        y = bottom - (loss - low) / (high - low) * (bottom - top)
        return x, y

    draw.rectangle(_PLOT, outline="black")
    for value in _nice_ticks(low + pad, high - pad, _TICKS):
        _, y = point(first, value)
        draw.line((left - 4, y, left, y), fill="black")
        draw.line((left + 1, y, right - 1, y), fill="#e6e6e6")
        draw.text((left - 6, y), f"{value:.3g}", fill="black", font=font, anchor="rm")
    for step in {round(value) for value in _nice_ticks(first, last, _TICKS)}:  # whole steps only
        x, _ = point(step, low)
        draw.line((x, bottom, x, bottom + 4), fill="black")
        draw.text((x, bottom + 6), str(step), fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, bottom + 26), "optimizer step", fill="black", font=font, anchor="mt")
    draw.text((8, top - 22), "loss", fill="black", font=font)

    legend_x, legend_y = right + 20, top
    for i, (name, losses) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        if losses:
            raw = [point(step, loss) for step, loss in enumerate(losses, start=1)]
            _polyline(draw, raw, _tint(colour, 0.35) if smooth else colour, 1)
            if smooth:
                averaged = moving_average(losses, window)
                _polyline(draw, [point(step, loss) for step, loss in enumerate(averaged, start=1)], colour, 2)
        label = name if losses else f"{name} (no loss)"
        y = legend_y + i * LINE_HEIGHT
        draw.line((legend_x, y + 7, legend_x + 18, y + 7), fill=colour if losses else "#bbbbbb", width=3)
        draw.text((legend_x + 24, y), label, fill="black", font=font)
    return image


def _polyline(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], colour, width: int) -> None:
    if len(points) == 1:  # a one-step run is a dot
        x, y = points[0]
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    else:
        draw.line(points, fill=colour, width=width, joint="curve")


def grid_size(rows: int, columns: int, cell: int, legend_lines: int) -> tuple[int, int]:
    return ROW_LABEL_WIDTH + columns * cell, HEADER_HEIGHT + rows * cell + legend_lines * LINE_HEIGHT


def sample_grid(
    title: str,
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    column_labels: Sequence[str],
    legend: Sequence[str],
    cell: int,
) -> Image.Image:
    """One row per (label, images), images pasted at `cell` x `cell` under their column labels; `legend` lines (the
    prompts the column labels abbreviate) go below."""
    width, height = grid_size(len(rows), len(column_labels), cell, len(legend))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((4, 4), title, fill="black", font=_font(14))
    for column, label in enumerate(column_labels):
        draw.text((ROW_LABEL_WIDTH + column * cell + 2, HEADER_HEIGHT - 16), label, fill="black", font=font)
    for row, (label, images) in enumerate(rows):
        y = HEADER_HEIGHT + row * cell
        draw.text((4, y + cell / 2), label, fill="black", font=font, anchor="lm")
        for column, sample in enumerate(images):
            image.paste(sample.convert("RGB").resize((cell, cell)), (ROW_LABEL_WIDTH + column * cell, y))
    legend_top = HEADER_HEIGHT + len(rows) * cell
    for i, line in enumerate(legend):
        draw.text((4, legend_top + i * LINE_HEIGHT + 2), line, fill="black", font=font)
    return image

"""Helpers shared by the tests (fixtures live in conftest.py)."""

from pathlib import Path

import numpy as np

from portrait_engine.errors import Cancelled

ENGINE_DIR = Path(__file__).resolve().parents[1]
FIXTURES = ENGINE_DIR.parents[1] / "test" / "fixtures" / "engine-protocol"

# A LoRA that visibly moves the tiny model in a few steps: high learning rate, alpha twice the rank.
QUICK_TRAIN = dict(max_steps=8, learning_rate=3e-2, rank=4, alpha=8.0, resolution=256, seed=1)


class RecordingJob:
    """A real JobContext: records progress and cancels itself once `cancel_at` steps are reported."""

    def __init__(self, cancel_at: int | None = None):
        self.steps: list[tuple[int, int, float | None]] = []
        self.previews: list[tuple[int, int, str]] = []
        self.cancel_at = cancel_at

    def check_cancel(self) -> None:
        if self.cancel_at is not None and len(self.steps) >= self.cancel_at:
            raise Cancelled()

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        self.steps.append((step, total, loss))

    def preview(self, step: int, total: int, image: str) -> None:
        self.previews.append((step, total, image))


class ScheduledJob(RecordingJob):
    """A RecordingJob with its request, never cancelled: what Scheduler.admit takes (scheduler.JobHandle)."""

    def __init__(self, request):
        super().__init__()
        self.request = request

    def is_cancelled(self) -> bool:
        return False


def assert_same_images(a: np.ndarray, b: np.ndarray) -> None:
    """Equal, up to the last bit of float rounding: batched calls of other row counts (a graph computes 8 rows where
    the eager call computes 6, batch mates add rows) make some CPUs' kernels (measured on an AMD EPYC) round a few
    values differently, and UniPC stepped by its maps (unipc_plan.py) sums its terms in another order than diffusers'
    step; either can move a pixel by 1/255 after a few denoising steps."""
    assert a.shape == b.shape
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert difference.max() <= 1 and (difference > 0).mean() <= 1e-3, (difference.max(), (difference > 0).sum())

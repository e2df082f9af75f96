"""Helpers shared by the tests (fixtures live in conftest.py)."""

from pathlib import Path

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

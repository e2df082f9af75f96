"""Shared fixtures: one tiny model cache and one Engine for the whole session, real code throughout."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from portrait_engine.config import EngineConfig
from portrait_engine.engine import Engine
from portrait_engine.errors import Cancelled
from portrait_engine.protocol import TrainParams, TrainRequest

ENGINE_DIR = Path(__file__).resolve().parents[1]
FIXTURES = ENGINE_DIR.parents[1] / "test" / "fixtures" / "engine-protocol"

# A LoRA that visibly moves the tiny model in a few steps: high learning rate, alpha twice the rank.
QUICK_TRAIN = dict(max_steps=8, learning_rate=3e-2, rank=4, alpha=8.0, resolution=256, seed=1)


class RecordingJob:
    """A real JobContext: records progress and cancels itself once `cancel_at` steps are reported."""

    def __init__(self, cancel_at: int | None = None):
        self.steps: list[tuple[int, int, float | None]] = []
        self.cancel_at = cancel_at

    def check_cancel(self) -> None:
        if self.cancel_at is not None and len(self.steps) >= self.cancel_at:
            raise Cancelled()

    def progress(self, step: int, total: int, loss: float | None = None) -> None:
        self.steps.append((step, total, loss))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("ENGINE_CACHE_DIR")
    return Path(configured) if configured else tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def config(cache_dir: Path) -> EngineConfig:
    return EngineConfig(profile="tiny", cache_dir=cache_dir, device=torch.device("cpu"))


@pytest.fixture(scope="session")
def engine(config: EngineConfig) -> Engine:
    return Engine(config)


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three 512x512 'portraits': coloured shapes on coloured backgrounds."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i, (background, face) in enumerate([("navy", "peachpuff"), ("darkgreen", "tan"), ("maroon", "wheat")]):
        image = Image.new("RGB", (512, 512), background)
        draw = ImageDraw.Draw(image)
        draw.ellipse((150 + 10 * i, 90, 360 - 10 * i, 330), fill=face)
        draw.rectangle((120, 340, 390, 512), fill="gray")
        path = folder / f"{i}.png"
        image.save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="session")
def trained_lora(engine: Engine, photos: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("lora") / "user.safetensors"
    request = TrainRequest(id="fixture", op="train", photos=photos, output=str(output), params=TrainParams(**QUICK_TRAIN))
    engine.train(request, RecordingJob())
    return output

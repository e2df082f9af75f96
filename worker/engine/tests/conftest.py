"""Shared fixtures: one tiny model cache and one Engine for the whole session, real code throughout."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from portrait_engine.config import EngineConfig
from portrait_engine.engine import Engine
from portrait_engine.protocol import TrainParams, TrainRequest

from .support import QUICK_TRAIN, RecordingJob


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
    request = TrainRequest(
        id="fixture", op="train", photos=photos, output=str(output), params=TrainParams(**QUICK_TRAIN)
    )
    engine.train(request, RecordingJob())
    return output

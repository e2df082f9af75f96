"""Reading request images and turning training photos into model input (no torchvision beside this torch)."""

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EngineError

PNG_THREADS = 4


def open_rgb(path: str) -> Image.Image:
    """Reads an image file upright and in RGB, or raises not_found / bad_request."""
    if not os.path.isfile(path):
        raise EngineError("not_found", f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
        raise EngineError("bad_request", f"image {path} could not be read: {error}") from error


def photo_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """DreamBooth's instance transform: Resize(size, lanczos), CenterCrop(size), ToTensor, Normalize([0.5], [0.5]).

    Returns a float32 (3, size, size) tensor in [-1, 1].
    """
    width, height = image.size
    # Resize scales the shorter side to `size`; the longer side is truncated, as torchvision does.
    scale = size / min(width, height)
    resized = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    image = image.resize(resized, Image.Resampling.LANCZOS)
    left = int(round((resized[0] - size) / 2.0))
    top = int(round((resized[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (pixels - 0.5) / 0.5


def load_photos(paths: Sequence[str], size: int) -> torch.Tensor:
    """All training photos as one (n, 3, size, size) batch; a missing, unreadable or too small photo fails before
    training. Too small: a shorter side below `size`, which would be upscaled, i.e. trained below the resolution."""
    tensors = []
    for path in paths:
        image = open_rgb(path)
        if min(image.size) < size:
            raise EngineError(
                "bad_request", f"photo {path} is {image.width}x{image.height}, smaller than the resolution {size}"
            )
        tensors.append(photo_tensor(image, size))
    return torch.stack(tensors)


def save_pngs(images: Sequence[Image.Image], folder: Path) -> list[str]:
    """Writes 0.png, 1.png, … into folder; each file appears complete or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    finals = [folder / f"{i}.png" for i in range(len(images))]
    temps = [folder / f".{final.name}.tmp" for final in finals]
    try:
        # zlib's fastest level: several times faster than PIL's default (6) for ~10% more bytes; PIL releases the
        # GIL while compressing, so a batch's images encode in parallel.
        with ThreadPoolExecutor(max_workers=min(len(images), PNG_THREADS) or 1) as pool:
            list(pool.map(lambda pair: pair[0].save(pair[1], format="PNG", compress_level=1), zip(images, temps)))
        for temp, final in zip(temps, finals):
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return [str(final) for final in finals]

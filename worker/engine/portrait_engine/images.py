"""Reading request images and turning training photos into model input (no torchvision beside this torch)."""

import io
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import EngineError

# A PNG's pixels are deflated in this many stripes at once (see png_bytes); images of one batch share the pool.
PNG_THREADS = min(8, os.cpu_count() or 1)
_png_pool = ThreadPoolExecutor(max_workers=PNG_THREADS, thread_name_prefix="png")


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


def save_pngs(images: Sequence[Image.Image], folder: Path, encoded: Sequence[bytes] | None = None) -> list[str]:
    """Writes 0.png, 1.png, … into folder (`encoded`: the images' PNG files, made already); each file appears
    complete or not at all."""
    folder.mkdir(parents=True, exist_ok=True)
    finals = [folder / f"{i}.png" for i in range(len(images))]
    temps = [folder / f".{final.name}.tmp" for final in finals]
    try:
        for data, temp in zip(png_many(images) if encoded is None else encoded, temps, strict=True):
            temp.write_bytes(data)
        for temp, final in zip(temps, finals):
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return [str(final) for final in finals]


def png_bytes(image: Image.Image) -> bytes:
    """The image as a PNG file, its pixels deflated in PNG_THREADS stripes at once (zlib's fastest level; zlib
    releases the GIL). An 8-bit RGB PNG like PIL's, but PIL deflates on one thread: 47 ms for a 512 px portrait on
    the H200 machine's CPU, on the critical path of every /imagine. Each row is "Up"-filtered (its difference from
    the row above, computed at once by numpy) instead of PIL's adaptive per-row choice: a few % larger on photos.
    The stripes are raw deflate streams ended by a sync flush (a byte boundary), so their concatenation is one valid
    stream, as pigz does it. Modes other than RGB go through PIL."""
    return png_many([image])[0]


def png_many(images: Sequence[Image.Image]) -> list[bytes]:
    """png_bytes of each image, every image's filtering and then every stripe of all of them through the pool at
    once: the requests that end on one step are written together (one image at a time left most threads idle)."""
    filtered = list(_png_pool.map(_filtered, [image for image in images if image.mode == "RGB"]))
    deflated = iter(_png_pool.map(_deflate_stripe, [stripe for _, parts in filtered for stripe in parts]))
    rgb = iter(filtered)
    out = []
    for image in images:
        if image.mode != "RGB":
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
            out.append(buffer.getvalue())
            continue
        adler, parts = next(rgb)
        width, height = image.size
        data = b"".join(next(deflated) for _ in parts)
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        # zlib's header for the fastest level (0x78 0x01), the raw stripes, then the Adler-32 of all the data.
        idat = b"\x78\x01" + data + struct.pack(">I", adler)
        out.append(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
                   + _png_chunk(b"IEND", b""))
    return out


def _filtered(image: Image.Image) -> tuple[int, list[tuple[np.ndarray, bool]]]:
    """An RGB image's Up-filtered scanlines: their Adler-32 and their stripes (the last one flagged)."""
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # PNG filter type Up
    filtered[0, 1:] = rows[0]  # (the row above the first is zeros)
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter is defined
    raw = filtered.reshape(-1)
    bounds = np.linspace(0, height, min(PNG_THREADS, height) + 1).astype(int) * filtered.shape[1]
    return zlib.adler32(raw), [(raw[a:b], i == len(bounds) - 2) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _deflate_stripe(stripe: tuple[np.ndarray, bool]) -> bytes:
    data, last = stripe
    deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
    return deflate.compress(data) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))

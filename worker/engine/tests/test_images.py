import io
import zlib

import numpy as np
import pytest
from PIL import Image

from portrait_engine import images
from portrait_engine.images import png_bytes, save_pngs


@pytest.mark.parametrize("size", [(512, 512), (96, 64), (13, 7), (5, 1), (1, 9)])
def test_striped_png_decodes_to_the_same_pixels(size):
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2] //= 7  # a smooth half too: rows that the Up filter makes compressible
    data = png_bytes(Image.fromarray(pixels))
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()  # PIL checks every chunk's CRC and zlib the stream's Adler-32
        assert (decoded.format, decoded.mode, decoded.size) == ("PNG", "RGB", size)
        assert np.array_equal(np.asarray(decoded), pixels)
    # One zlib stream across the stripes: zlib itself inflates it whole.
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == size[1] * (3 * size[0] + 1)


def test_the_stripes_are_deflated_apart(monkeypatch):
    calls = []
    deflate = images._deflate_stripe
    monkeypatch.setattr(images, "_deflate_stripe", lambda stripe: calls.append(len(stripe[0])) or deflate(stripe))
    png_bytes(Image.new("RGB", (64, 64), "teal"))
    assert len(calls) == min(images.PNG_THREADS, 64) and sum(calls) == 64 * (64 * 3 + 1)


def test_other_modes_and_files(tmp_path):
    grey = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L")
    paths = save_pngs([grey, Image.new("RGB", (8, 8), "red")], tmp_path / "out")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["0.png", "1.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "1.png"]  # no temporary left
    with Image.open(paths[0]) as back:
        assert back.mode == "L" and np.array_equal(np.asarray(back), np.asarray(grey))


def test_several_images_are_encoded_at_once_each_as_alone(monkeypatch):
    """png_many: every image's filtering in one pass over the pool and every stripe of all of them in another (the
    requests that end on one step), each file the same as png_bytes makes alone; other modes through PIL."""
    rng = np.random.default_rng(3)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in ((64, 48), (7, 5), (96, 96))]
    pictures.insert(1, Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L"))
    alone = [png_bytes(picture) for picture in pictures]
    maps = []
    pool_map = images._png_pool.map
    monkeypatch.setattr(images._png_pool, "map", lambda fn, items: maps.append(fn) or pool_map(fn, items))
    assert images.png_many(pictures) == alone
    assert maps == [images._filtered, images._deflate_stripe]
    for data, picture in zip(alone, pictures):
        with Image.open(io.BytesIO(data)) as back:
            assert back.mode == picture.mode and np.array_equal(np.asarray(back), np.asarray(picture))

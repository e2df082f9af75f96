import copy
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from portrait_engine.engine import Engine
from portrait_engine.errors import Cancelled, EngineError
from portrait_engine.protocol import GenerateRequest

from .support import RecordingJob


class Generator:
    """Runs generate requests on the shared engine and reads the PNGs back as arrays."""

    def __init__(self, engine: Engine, folder: Path):
        self.engine = engine
        self.folder = folder
        self.count = 0

    def request(self, **fields) -> GenerateRequest:
        self.count += 1
        defaults = dict(prompt="a photo of sks person", steps=2, width=96, height=64, seed=7)
        output_dir = str(self.folder / str(self.count))
        return GenerateRequest(id=f"g{self.count}", op="generate", output_dir=output_dir, **{**defaults, **fields})

    def images(self, job: RecordingJob | None = None, **fields) -> list[np.ndarray]:
        result = self.engine.generate(self.request(**fields), job or RecordingJob())
        return [np.asarray(Image.open(path)) for path in result.images]


@pytest.fixture
def gen(engine: Engine, tmp_path: Path) -> Generator:
    return Generator(engine, tmp_path)


def test_same_seed_same_pixels_other_seed_differs(gen: Generator):
    job = RecordingJob()
    result = gen.engine.generate(gen.request(), job)
    assert result.seed == 7 and result.images == [os.path.join(gen.folder, "1", "0.png")]
    with Image.open(result.images[0]) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (96, 64), "RGB")
    assert [(step, total) for step, total, _ in job.steps] == [(1, 2), (2, 2)]
    (first,) = [np.asarray(Image.open(path)) for path in result.images]
    (again,) = gen.images()
    (other,) = gen.images(seed=8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_image_i_of_a_request_is_image_0_of_seed_plus_i(gen: Generator):
    pair = gen.images(num_images=2, seed=5)
    (single,) = gen.images(seed=6)
    # Same starting noise; batch 2 vs 1 only changes float rounding in the kernels.
    difference = np.abs(pair[1].astype(int) - single).max()
    assert len(pair) == 2 and difference <= 2, difference
    assert np.abs(pair[0].astype(int) - single).max() > 20


def test_random_seed_is_reported(gen: Generator):
    request = gen.request(seed=None)
    result = gen.engine.generate(request, RecordingJob())
    (image,) = [np.asarray(Image.open(path)) for path in result.images]
    assert np.array_equal(image, gen.images(seed=result.seed)[0])


def test_controlnet_is_deterministic_and_conditions_the_output(gen: Generator, photos):
    plain = gen.images()
    posed = gen.images(control_image=photos[0])
    assert np.array_equal(posed, gen.images(control_image=photos[0]))
    assert not np.array_equal(posed, plain)
    assert not np.array_equal(posed, gen.images(control_image=photos[1]))
    # At scale 0 the ControlNet's residuals vanish: exactly the txt2img output.
    assert np.array_equal(gen.images(control_image=photos[0], controlnet_scale=0.0), plain)


def test_lora_changes_the_output_and_is_gone_for_the_next_request(gen: Generator, trained_lora: Path, photos):
    plain = gen.images()
    with_lora = gen.images(lora=str(trained_lora))
    assert not np.array_equal(with_lora, plain)
    assert np.array_equal(gen.images(lora=str(trained_lora)), with_lora)
    assert np.array_equal(gen.images(), plain)
    assert np.array_equal(gen.images(lora=str(trained_lora), lora_scale=0.0), plain)
    posed = gen.images(control_image=photos[0])
    assert not np.array_equal(gen.images(control_image=photos[0], lora=str(trained_lora)), posed)
    assert np.array_equal(gen.images(control_image=photos[0]), posed)


def test_lora_cache_reuses_an_adapter_and_reloads_a_rewritten_file(gen: Generator, trained_lora: Path, tmp_path):
    pipe = gen.engine.models.pipe
    lora = tmp_path / "user.safetensors"
    shutil.copy(trained_lora, lora)
    first = gen.images(lora=str(lora))
    adapters = pipe.get_list_adapters()["unet"]
    gen.images(lora=str(lora))
    assert pipe.get_list_adapters()["unet"] == adapters
    stat = lora.stat()
    os.utime(lora, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert np.array_equal(gen.images(lora=str(lora)), first)
    reloaded = pipe.get_list_adapters()["unet"]
    assert len(reloaded) == len(adapters) and reloaded != adapters


@pytest.mark.parametrize("scheduler", ["unipc", "dpmpp_2m_karras", "euler_a", "ddim"])
def test_every_scheduler_generates(gen: Generator, scheduler):
    (image,) = gen.images(scheduler=scheduler, width=64, height=64)
    assert image.shape == (64, 64, 3)


def test_missing_and_unreadable_inputs_are_reported(gen: Generator, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    broken_lora = tmp_path / "broken.safetensors"
    broken_lora.write_bytes(b"not a safetensors file")
    cases = [
        (dict(lora=str(tmp_path / "missing.safetensors")), "not_found"),
        (dict(control_image=str(tmp_path / "missing.png")), "not_found"),
        (dict(control_image=str(broken)), "bad_request"),
        (dict(lora=str(broken_lora)), "bad_request"),
    ]
    for fields, code in cases:
        with pytest.raises(EngineError) as error:
            gen.images(**fields)
        assert error.value.code == code
    assert len(gen.images()) == 1  # and the engine still works


def test_cancel_stops_generation_before_any_image_is_written(gen: Generator):
    request = gen.request(steps=20)
    job = RecordingJob(cancel_at=1)
    with pytest.raises(Cancelled):
        gen.engine.generate(request, job)
    assert len(job.steps) == 1
    assert not Path(request.output_dir).exists()


def test_each_request_gets_its_own_scheduler_over_the_shared_modules(engine: Engine):
    """_derive copies a template pipeline per (scheduler, ControlNet): the modules are the base's, the scheduler is
    the request's own (stepping one leaves the others and the template as they were), and a base module replaced
    since the template was built gets a new template."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    from portrait_engine.generate import _derive

    models = engine.models
    a, b = _derive(models, "unipc", False), _derive(models, "unipc", False)
    template = models.pipelines[("unipc", False)]
    assert a.unet is b.unet is models.pipe.unet and a.text_encoder is models.pipe.text_encoder
    assert isinstance(a.scheduler, UniPCMultistepScheduler) and len({id(a.scheduler), id(b.scheduler), id(template.scheduler)}) == 3
    a.scheduler.set_timesteps(7)
    assert a.scheduler.num_inference_steps == 7 and b.scheduler.num_inference_steps is None
    assert template.scheduler.num_inference_steps is None
    assert dict(a.scheduler.config) == dict(UniPCMultistepScheduler.from_config(models.pipe.scheduler.config).config)
    karras = _derive(models, "dpmpp_2m_karras", False).scheduler
    assert isinstance(karras, DPMSolverMultistepScheduler) and karras.config.use_karras_sigmas
    assert type(_derive(models, "unipc", True)).__name__ == "StableDiffusionControlNetPipeline"
    stale = copy.copy(template)
    object.__setattr__(stale, "unet", torch.nn.Identity())  # a template over another UNet than the base's
    models.pipelines[("unipc", False)] = stale
    assert _derive(models, "unipc", False).unet is models.pipe.unet  # built again
    assert models.pipelines[("unipc", False)] is not stale

"""Our generation against diffusers' own pipelines, loaded independently from the same tiny weights.

The reference side is the plain diffusers recipe: `from_pretrained`, `load_lora_weights`, the LoRA scale through
`cross_attention_kwargs`, the scheduler built from the documented arguments, one CPU generator per image. Our side
is a full engine request (shared modules, per-request pipeline, LoRA cache with set_adapters, PNG files).
Tolerance: at most 1 of 255 per pixel channel (PNG quantization of the same float image may round either way);
measured: 0 on the CPU.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image

from portrait_engine.engine import Engine
from portrait_engine.images import open_rgb
from portrait_engine.protocol import GenerateRequest
from portrait_engine.tiny import BASE_DIR, CONTROLNET_DIR

from .support import RecordingJob

TOLERANCE = 1  # of 255
REFERENCE_SCHEDULERS = {
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
    "dpmpp_2m_karras": lambda config: DPMSolverMultistepScheduler.from_config(
        config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    ),
    "euler_a": lambda config: EulerAncestralDiscreteScheduler.from_config(config),
    "ddim": lambda config: DDIMScheduler.from_config(config),
}
REQUEST = dict(
    prompt="a photo of sks person, studio light",
    negative_prompt="blurry",
    steps=3,
    guidance_scale=6.0,
    width=96,
    height=64,
    num_images=2,
    seed=11,
    lora_scale=0.7,
)


@pytest.fixture(scope="module")
def reference(cache_dir: Path, trained_lora: Path) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline.from_pretrained(
        cache_dir / BASE_DIR, safety_checker=None, requires_safety_checker=False
    )
    pipe.load_lora_weights(str(trained_lora))
    pipe.set_progress_bar_config(disable=True)
    pipe.base_scheduler_config = pipe.scheduler.config
    return pipe


def _ours(engine: Engine, folder: Path, **fields) -> np.ndarray:
    request = GenerateRequest(id="eq", op="generate", output_dir=str(folder), **{**REQUEST, **fields})
    result = engine.generate(request, RecordingJob())
    return np.stack([np.asarray(Image.open(path)) for path in result.images]).astype(int)


def _theirs(pipe, scheduler: str, base_config, request: dict = REQUEST, **extra) -> np.ndarray:
    # From the model's own config each time: a config read back from another scheduler carries its options along.
    pipe.scheduler = REFERENCE_SCHEDULERS[scheduler](base_config)
    images = pipe(
        prompt=request["prompt"],
        negative_prompt=request["negative_prompt"],
        num_inference_steps=request["steps"],
        guidance_scale=request["guidance_scale"],
        width=request["width"],
        height=request["height"],
        num_images_per_prompt=request["num_images"],
        generator=[torch.Generator("cpu").manual_seed(request["seed"] + i) for i in range(request["num_images"])],
        cross_attention_kwargs={"scale": request["lora_scale"]},
        **extra,
    ).images
    return np.stack([np.asarray(image) for image in images]).astype(int)


@pytest.mark.parametrize("scheduler", list(REFERENCE_SCHEDULERS))
def test_txt2img_with_lora_matches_stable_diffusion_pipeline(engine, reference, trained_lora, tmp_path, scheduler):
    ours = _ours(engine, tmp_path, lora=str(trained_lora), scheduler=scheduler)
    theirs = _theirs(reference, scheduler, reference.base_scheduler_config)
    assert ours.shape == theirs.shape == (2, 64, 96, 3)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    # Not vacuous: the LoRA and the scheduler both change the picture.
    assert np.abs(ours - _ours(engine, tmp_path / "plain", scheduler=scheduler)).max() > 10


@pytest.mark.parametrize("scheduler", ["unipc", "euler_a"])
def test_controlnet_with_lora_matches_stable_diffusion_controlnet_pipeline(
    engine, reference, cache_dir, trained_lora, photos, tmp_path, scheduler
):
    controlnet = ControlNetModel.from_pretrained(cache_dir / CONTROLNET_DIR)
    pipe = StableDiffusionControlNetPipeline(**reference.components, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    pose = open_rgb(photos[1])
    ours = _ours(
        engine, tmp_path, lora=str(trained_lora), scheduler=scheduler, control_image=photos[1], controlnet_scale=0.8
    )
    theirs = _theirs(pipe, scheduler, reference.base_scheduler_config, image=pose, controlnet_conditioning_scale=0.8)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - _ours(engine, tmp_path / "txt2img", lora=str(trained_lora), scheduler=scheduler)).max() > 10


def test_attention_is_memory_efficient_everywhere(engine):
    from diffusers.models.attention_processor import AttnProcessor2_0

    models = engine.models
    for module in (models.pipe.unet, models.pipe.vae, models.controlnet):
        assert all(isinstance(p, AttnProcessor2_0) for p in module.attn_processors.values())

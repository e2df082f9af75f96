"""Batched generation across users: every request of one mixed batch matches diffusers' own pipeline for it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

from portrait_engine.engine import Engine
from portrait_engine.images import open_rgb
from portrait_engine.multigen import Generation, decode_together, denoise_step
from portrait_engine.multilora import NONE
from portrait_engine.protocol import GenerateRequest
from portrait_engine.tiny import BASE_DIR, CONTROLNET_DIR

from .test_equivalence import TOLERANCE, _theirs
from .test_multilora import random_lora


@pytest.fixture(scope="module")
def text_lora(engine: Engine, tmp_path_factory) -> Path:
    """A LoRA on the UNet and the text encoder."""
    return random_lora(engine, tmp_path_factory.mktemp("text-lora") / "t.safetensors", 2, 3.0, 9, ["to_q", "to_v"], True)


def _request(**fields) -> GenerateRequest:
    base = dict(prompt="a photo of sks person", steps=3, width=96, height=64, seed=1, output_dir="/tmp/unused")
    return GenerateRequest(id="m", op="generate", **{**base, **fields})


def _reference(pipe, request: GenerateRequest, lora: Path | None, control=None) -> np.ndarray:
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    try:
        extra = {} if control is None else dict(image=control, controlnet_conditioning_scale=request.controlnet_scale)
        return _theirs(pipe, request.scheduler, pipe.base_scheduler_config, request.model_dump(), **extra)
    finally:
        pipe.unload_lora_weights()


def test_a_mixed_batch_matches_the_pipelines_request_by_request(
    engine: Engine, cache_dir: Path, trained_lora: Path, text_lora: Path, photos
):
    models = engine.models
    pose = open_rgb(photos[1])
    cases = [  # request, LoRA file, control image
        (_request(lora=str(trained_lora), lora_scale=0.7, negative_prompt="blurry", guidance_scale=6.0, num_images=2,
                  seed=11), trained_lora, None),
        (_request(prompt="a portrait", scheduler="euler_a", guidance_scale=1.0, seed=4), None, None),  # no CFG
        (_request(lora=str(text_lora), scheduler="ddim", steps=4, seed=5), text_lora, None),  # more steps
        (_request(width=64, height=64, scheduler="dpmpp_2m_karras", seed=6), None, None),  # another size
        (_request(lora=str(trained_lora), control_image=photos[1], controlnet_scale=0.8, seed=7), trained_lora, pose),
        (_request(control_image=photos[1], controlnet_scale=0.5, scheduler="euler_a", seed=8), None, pose),
    ]
    slots = {trained_lora: (0, 0.7), text_lora: (1, 1.0)}
    for path, (slot, scale) in slots.items():
        models.slots.load_slot_file(slot, path, scale)
    # The same LoRA at another scale is another slot.
    models.slots.load_slot_file(2, trained_lora, 1.0)
    try:
        generations = []
        for request, lora, control in cases:
            slot = NONE if lora is None else (2 if control is not None else slots[lora][0])
            generations.append(Generation(models, request, request.seed, control, slot))
        calls = []
        original = models.pipe.unet.forward
        models.pipe.unet.forward = lambda *a, **k: calls.append(len(a[0])) or original(*a, **k)
        try:
            while not all(g.done for g in generations):
                denoise_step(models, generations)
        finally:
            del models.pipe.unet.forward
        decodes = []
        vae = models.pipe.vae
        original_decode = vae.decode
        vae.decode = lambda z, **k: decodes.append(len(z)) or original_decode(z, **k)
        try:
            decoded = decode_together(generations)  # as the scheduler decodes the requests done on one step
        finally:
            del vae.decode
        ours = [np.stack([np.asarray(i) for i in decoded[g]]).astype(int) for g in generations]
    finally:
        for slot in range(3):
            models.slots.clear_slot(slot)
    # One UNet call per step and group: 96x64 txt2img (2x2 + 1 + 2 rows), 64x64, ControlNet (2 + 2 rows).
    assert calls[:3] == [7, 2, 4]
    assert sorted(decodes) == [1, 6]  # one VAE call per latent size: 2 + 1 + 1 + 1 + 1 images at 96x64, one at 64

    reference = StableDiffusionPipeline.from_pretrained(cache_dir / BASE_DIR, safety_checker=None,
                                                        requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    reference.base_scheduler_config = reference.scheduler.config
    controlnet = StableDiffusionControlNetPipeline(
        **reference.components, controlnet=ControlNetModel.from_pretrained(cache_dir / CONTROLNET_DIR)
    )
    controlnet.set_progress_bar_config(disable=True)
    controlnet.base_scheduler_config = reference.base_scheduler_config
    for (request, lora, control), image in zip(cases, ours):
        if control is not None:
            request = request.model_copy(update=dict(lora_scale=1.0))
        theirs = _reference(controlnet if control is not None else reference, request, lora, control)
        assert image.shape == theirs.shape
        assert np.abs(image - theirs).max() <= TOLERANCE, request
    # Not vacuous: LoRAs, prompts and seeds make different pictures.
    assert np.abs(ours[0][0] - ours[1][0]).max() > 10 and np.abs(ours[4][0] - ours[5][0]).max() > 10


def test_a_shared_decode_that_fails_is_retried_request_by_request(engine: Engine, monkeypatch):
    from portrait_engine import multigen

    models = engine.models
    generations = [Generation(models, _request(seed=s, steps=2), s, None) for s in (1, 2, 3)]
    while not all(g.done for g in generations):
        denoise_step(models, generations)
    alone = {g: np.asarray(g.finish()[0]) for g in generations}
    poisoned = generations[1]
    decode = multigen._decode

    def failing(members):
        if poisoned in members:
            raise RuntimeError("decode failed")
        return decode(members)

    monkeypatch.setattr(multigen, "_decode", failing)
    outcome = decode_together(generations)
    assert isinstance(outcome[poisoned], RuntimeError)
    for g in (generations[0], generations[2]):
        assert np.array_equal(np.asarray(outcome[g][0]), alone[g])


def test_shared_decodes_are_bounded_in_images(engine: Engine, monkeypatch):
    from portrait_engine import multigen

    models = engine.models
    counts = [2, 1, 2, 1]  # images per request; at most 3 per decode: [2, 1], [2, 1]
    generations = [Generation(models, _request(seed=s, steps=1, num_images=n), s, None) for s, n in enumerate(counts)]
    while not all(g.done for g in generations):
        denoise_step(models, generations)
    monkeypatch.setattr(multigen, "DECODE_BATCH", 3)
    decodes = []
    vae = models.pipe.vae
    original = vae.decode
    vae.decode = lambda z, **k: decodes.append(len(z)) or original(z, **k)
    try:
        outcome = decode_together(generations)
    finally:
        del vae.decode
    assert decodes == [3, 3] and [len(outcome[g]) for g in generations] == counts



def _run(models, cases, join_later=()):
    """Each case's final latents, the requests in `join_later` admitted one step after the others."""
    generations = [Generation(models, request, request.seed, control, slot) for request, control, slot in cases]
    waiting = [g for i, g in enumerate(generations) if i in join_later]
    active = [g for g in generations if g not in waiting]
    while not all(g.done for g in generations):
        denoise_step(models, active)
        active += waiting
        waiting = []
    return [g.latents for g in generations]


def test_unipc_requests_step_in_one_product_and_each_matches_diffusers_step(
    engine: Engine, trained_lora: Path, photos, monkeypatch
):
    from diffusers import UniPCMultistepScheduler

    from portrait_engine import multigen, unipc_plan

    models = engine.models
    pose = open_rgb(photos[1])
    cases = [  # request, control image, slot
        (_request(lora=str(trained_lora), guidance_scale=6.0, num_images=2, seed=11), None, 0),
        (_request(prompt="a portrait", guidance_scale=1.0, seed=4), None, NONE),  # no CFG: one row
        (_request(control_image=photos[1], controlnet_scale=0.8, seed=7), pose, NONE),  # another UNet call
        (_request(seed=5, steps=4), None, NONE),  # another schedule
        (_request(seed=6), None, NONE),  # joins a step later
        (_request(scheduler="euler_a", seed=8), None, NONE),  # not UniPC: diffusers' step
    ]
    models.slots.load_slot_file(0, trained_lora, 1.0)
    products, steps = [], []
    step_together, step = unipc_plan.step_together, UniPCMultistepScheduler.step
    monkeypatch.setattr(unipc_plan, "step_together",
                        lambda states, *a: products.append(sum(len(x) for x in a[1])) or step_together(states, *a))

    def counted(self, out, t, sample, **k):  # requests' steps (not the maps' reading, over rows of one value)
        steps.extend([len(sample)] if sample.dim() == 4 else [])
        return step(self, out, t, sample, **k)

    monkeypatch.setattr(UniPCMultistepScheduler, "step", counted)
    try:
        planned = _run(models, cases, join_later={4})
        assert steps == []
        monkeypatch.setattr(multigen, "PLANNED_UNIPC", False)
        theirs = _run(models, cases, join_later={4})
    finally:
        models.slots.clear_slot(0)
    # Per tick one product over every UniPC row (2 + 1 + 1 + 1, then case 4's too; then cases 3 and 4's last), and
    # no diffusers UniPC step; stepped by diffusers, one per request and step.
    assert products == [5, 6, 6, 2]
    assert len(steps) == 3 + 3 + 3 + 4 + 3 and set(steps) == {1, 2}
    for ours, reference in zip(planned, theirs):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    assert not torch.equal(planned[0][0], planned[1][0])


def test_a_shared_scheduler_step_that_fails_is_retried_request_by_request(engine: Engine, monkeypatch):
    from portrait_engine import unipc_plan

    cases = [(_request(seed=s), None, NONE) for s in (1, 2, 3)]
    alone = _run(engine.models, cases)
    step_together = unipc_plan.step_together

    def failing(states, *rest):
        if len(states) > 1:
            raise RuntimeError("shared step failed")
        return step_together(states, *rest)

    monkeypatch.setattr(unipc_plan, "step_together", failing)
    for ours, theirs in zip(_run(engine.models, cases), alone):
        assert torch.equal(ours, theirs)

"""Intermediate previews: a sample portrait painted with a training's LoRA as it stands, at a few steps before the end.

A preview is an ordinary generation of the job's own subject prompt (`instance_prompt`) at its training resolution,
seeded with the job's seed from its own CPU generators (multigen.Generation, diffusers' pipeline on the peft path),
in few denoising steps, without gradients. It reads the trained weights and writes nothing into them or into the
job's random streams, so a training trains the same with or without previews (tests/test_previews.py), and a resumed
one stays bit-identical. A preview that fails is logged and skipped: it never fails its training.
"""

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .generate import _derive
from .images import png_bytes
from .models import Models
from .multigen import Generation, denoise_step
from .protocol import GenerateRequest, TrainParams, TrainRequest
from .safety import screen

if TYPE_CHECKING:
    from .fast import FastGenerator

log = logging.getLogger(__name__)


def preview_steps(max_steps: int, count: int) -> list[int]:
    """The optimizer steps after which previews are painted: `count` evenly spaced strictly before the last step
    (whose result is the final LoRA itself), e.g. 1/3 and 2/3 of the way for two."""
    steps = {round(max_steps * k / (count + 1)) for k in range(1, count + 1)}
    return sorted(step for step in steps if 1 <= step < max_steps)


def preview_path(request: TrainRequest, step: int) -> Path:
    folder = Path(request.preview_dir) if request.preview_dir else Path(request.output).parent
    return folder / f"preview-{step}.png"


def _preview_request(request: TrainRequest, params: TrainParams) -> GenerateRequest:
    # The reference's validation images use the training prompt; the job's seed keeps every preview comparable.
    return GenerateRequest(
        id=f"{request.id}:preview",
        op="generate",
        prompt=params.instance_prompt,
        steps=request.preview_steps,
        seed=params.seed,
        width=params.resolution,
        height=params.resolution,
        output_dir=str(preview_path(request, 0).parent),
    )


def _save(image, path: Path, request: TrainRequest, step: int) -> str | None:
    if image is None:  # the output check withheld it: a preview like any other picture is never written
        log.info("%s: the safety check withheld the preview at step %d", request.id, step)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".png.partial")
    partial.write_bytes(png_bytes(image))  # between the scheduler's ticks: the striped encoder, not PIL's
    partial.replace(path)  # the worker never sees half a file
    return str(path)


def paint_in_slot(
    models: Models, fast: "FastGenerator | None", request: TrainRequest, params: TrainParams, slot: int, step: int
) -> str | None:
    """The scheduler path: the job's slot holds its LoRA; painted alone, between ticks. Returns the PNG's path."""
    try:
        generation = Generation(models, _preview_request(request, params), params.seed, None, slot, fast)
        while not generation.done:
            failures = denoise_step(models, [generation], fast)
            if failures:
                raise failures[generation]
        return _save(generation.finish()[0], preview_path(request, step), request, step)
    except Exception:  # noqa: BLE001 (a preview is a courtesy: the training goes on without it)
        log.exception("%s: preview at step %d failed", request.id, step)
        return None


def paint_with_peft(models: Models, request: TrainRequest, params: TrainParams, step: int) -> str | None:
    """The peft path: the training's adapter is live in the shared UNet (and text encoder); painted in eval mode."""
    pipe = models.pipe
    modes = [(module, module.training) for module in (pipe.unet, pipe.text_encoder)]
    generate = _preview_request(request, params)
    try:
        for module, _ in modes:
            module.eval()
        with torch.no_grad():
            image = _derive(models, generate.scheduler, controlnet=False)(
                prompt=generate.prompt,
                num_inference_steps=generate.steps,
                guidance_scale=generate.guidance_scale,
                width=generate.width,
                height=generate.height,
                generator=torch.Generator("cpu").manual_seed(params.seed),
                output_type="pil",
            ).images[0]
        return _save(screen(models.safety, [image])[0], preview_path(request, step), request, step)
    except Exception:  # noqa: BLE001
        log.exception("%s: preview at step %d failed", request.id, step)
        return None
    finally:
        for module, training in modes:
            module.train(training)

"""Several generate requests in one denoising loop, each user's LoRA in its own slot (multilora.py).

A `Generation` is one request's state, set up exactly as `StableDiffusionPipeline.__call__` /
`StableDiffusionControlNetPipeline.__call__` set it up (their own `encode_prompt`, `prepare_latents`,
`prepare_image`, `prepare_extra_step_kwargs`, a fresh scheduler per request, CPU generators seeded seed + i), with
its prompt encoded under its own slot. `denoise_step(models, generations)` advances every given request by one
step: requests of one latent size (and ControlNet or not) share one UNet call (and one ControlNet call) over all
their rows, CFG's uncond/cond rows included, each row with its request's slot, timestep and ControlNet scale;
guidance and the scheduler step are then per request, on its own rows, with its own generators (UniPC's steps, which
draw no noise, as one batched product over all its requests: unipc_plan.py, PLANNED_UNIPC). So a request's
image does not depend on its batch mates (up to float rounding of the batched kernels; tests/test_multigen.py
compares each request of a mixed batch with diffusers' pipelines: the equivalence tests' 1/255). `finish()` and
`decode_together()` decode (the pipelines' VAE decode and postprocessing; requests that finish on one step share a
VAE call) once the requests' steps are done, and screen the images through the optional safety check (safety.py).
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch
from diffusers import UniPCMultistepScheduler
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from PIL import Image

from . import unipc_plan
from .generate import _derive
from .models import Models
from .multilora import NONE
from .protocol import GenerateRequest
from .safety import Screened, screen

if TYPE_CHECKING:
    from .fast import FastGenerator

# diffusers keeps UniPC's sigmas on the CPU and copies several to the GPU each step; each such copy waits for the GPU
# to drain, so the host can never queue a step ahead. On the device they cost nothing (bench_fast.py measures both).
SIGMAS_ON_DEVICE = True
# UniPC's corrector solves a 2x2 system every step with torch.linalg.solve, which reads the factorization's `info`
# back to the host to raise on a singular matrix: a device sync per step, so the host can't queue the next step's
# launches while the GPU runs this one. The matrix, [[1, 1], [r, 1]] with r != 1 for distinct timesteps, is never
# singular; solve_ex computes the same solution without the check.
SOLVE_WITHOUT_SYNC = True
# UniPC requests are stepped by the linear maps unipc_plan.py reads from diffusers' scheduler: every such request of
# one latent shape in one batched product per step, ~10 kernels, where diffusers' step is ~150 per request (5.4 ms of
# each step of 8 users on an H100; bench_fast.py measures both).
PLANNED_UNIPC = True
# Images per shared VAE decode: its activations grow with the batch (a 512 px image's 128-channel layers are 64 MiB
# each), so many requests finishing together are decoded in slices; past a few images a bigger batch saves little.
DECODE_BATCH = 8


@contextmanager
def _solve_without_sync() -> Iterator[None]:
    if not SOLVE_WITHOUT_SYNC:
        yield
        return
    solve = torch.linalg.solve
    torch.linalg.solve = lambda a, b, **kw: torch.linalg.solve_ex(a, b, **kw)[0]
    try:
        yield
    finally:
        torch.linalg.solve = solve


class Generation:
    """One request in the batched loop; `slot` holds its LoRA (NONE for none)."""

    def __init__(
        self,
        models: Models,
        request: GenerateRequest,
        seed: int,
        control_image: Image.Image | None,
        slot: int = NONE,
        fast: "FastGenerator | None" = None,
    ):
        self.models, self.request, self.seed, self.slot = models, request, seed, slot
        self.pipe = pipe = _derive(models, request.scheduler, controlnet=control_image is not None)
        device, count = models.device, request.num_images
        self.cfg = request.guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        # One generator per image, seeded seed, seed+1, ...: image i of a request is image 0 of seed+i.
        self.generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]
        # The text encoder's calls through the fast path's graph where it holds them (fast.encoding).
        with torch.no_grad(), models.slots.use([slot]), fast.encoding() if fast is not None else nullcontext():
            positive, negative = pipe.encode_prompt(
                request.prompt, device, count, self.cfg, request.negative_prompt
            )
        self.embeddings = torch.cat([negative, positive]) if self.cfg else positive
        self.timesteps, _ = retrieve_timesteps(pipe.scheduler, request.steps, device)
        guidance = request.guidance_scale if self.cfg else None
        maps = unipc_plan.request_maps(pipe.scheduler, guidance, device) if PLANNED_UNIPC else None
        self.planned = None if maps is None else unipc_plan.PlannedSteps(maps, self.cfg)
        stepped_by_diffusers = self.planned is None and isinstance(pipe.scheduler, UniPCMultistepScheduler)
        if SIGMAS_ON_DEVICE and device.type == "cuda" and stepped_by_diffusers:  # (a host sync: only where read)
            pipe.scheduler.sigmas = pipe.scheduler.sigmas.to(device)
        height, width = request.height, request.width
        self.control = None
        if control_image is not None:
            self.control = pipe.prepare_image(
                image=control_image, width=width, height=height, batch_size=count, num_images_per_prompt=count,
                device=device, dtype=models.controlnet.dtype, do_classifier_free_guidance=self.cfg, guess_mode=False,
            )
            height, width = self.control.shape[-2:]
            # Each row's ControlNet scale, on the device once (not a host-to-device copy per step).
            rows = len(self.control)
            self.control_scale = torch.full((rows, 1, 1, 1), request.controlnet_scale, dtype=self.control.dtype,
                                            device=device)
        self.latents = pipe.prepare_latents(
            count, pipe.unet.config.in_channels, height, width, self.embeddings.dtype, device, self.generators
        )
        self.extra = pipe.prepare_extra_step_kwargs(self.generators, 0.0)
        self.step_index = 0

    @property
    def total(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.step_index >= len(self.timesteps)

    def key(self) -> tuple:
        """Requests with equal keys can share a UNet call."""
        return tuple(self.latents.shape[1:]), self.control is not None

    def model_input(self) -> torch.Tensor:
        t = self.timesteps[self.step_index]
        latents = torch.cat([self.latents] * 2) if self.cfg else self.latents
        return self.pipe.scheduler.scale_model_input(latents, t)

    def advance(self, noise_pred: torch.Tensor) -> None:
        """One scheduler step with the UNet's prediction for this request's rows."""
        if self.planned is not None:
            _step_planned([self], [noise_pred])
            return
        if self.cfg:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + self.request.guidance_scale * (text - uncond)
        t = self.timesteps[self.step_index]
        with _solve_without_sync():
            self.latents = self.pipe.scheduler.step(noise_pred, t, self.latents, **self.extra, return_dict=False)[0]
        self.step_index += 1

    def finish(self) -> Screened:
        """The request's images, decoded, through the safety check (None where it withheld one)."""
        outcome = decode_together([self])[self]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


@torch.no_grad()
def decode_together(generations: Sequence[Generation]) -> dict[Generation, Screened | Exception]:
    """The images of finished requests, through the safety check: requests of one latent size share one VAE decode
    (the pipelines decode a request's images as one batch too). As in denoise_step, a shared decode that raises is
    retried request by request, so only the request at fault gets its exception."""
    groups: dict[tuple, list[Generation]] = {}
    for generation in generations:
        groups.setdefault(tuple(generation.latents.shape[1:]), []).append(generation)
    outcomes: dict[Generation, Screened | Exception] = {}
    for members in _batches(groups.values()):
        outcomes |= dict(zip(members, _together_or_alone(members, _decode)))
    return outcomes


def _together_or_alone(members: list[Generation], call: Callable[[list[Generation]], list]) -> list:
    """call(members)'s results, one per member; if the shared call raises, each member's own call's result or
    exception, so only the member at fault gets one."""
    try:
        return call(members)
    except Exception as error:  # noqa: BLE001
        if len(members) == 1:
            return [error]
    results = []
    for member in members:
        try:
            results.append(call([member])[0])
        except Exception as alone:  # noqa: BLE001
            results.append(alone)
    return results


def _batches(groups) -> Iterator[list[Generation]]:
    """Each group in runs of at most DECODE_BATCH images (a request's images stay together)."""
    for members in groups:
        run, images = [], 0
        for generation in members:
            if run and images + len(generation.latents) > DECODE_BATCH:
                yield run
                run, images = [], 0
            run.append(generation)
            images += len(generation.latents)
        yield run


def _decode(members: list[Generation]) -> list[Screened]:
    pipe = members[0].pipe
    vae = pipe.vae
    latents = torch.cat([g.latents for g in members])
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * len(image))
    # diffusers' "pil" output rounds (x * 255) in float32 on the host; the same float32 arithmetic on the device
    # gives the same bytes, and a quarter of the data crosses to the host.
    pixels = (image.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    images = [Image.fromarray(p) for p in pixels]
    out, start = [], 0
    for generation in members:
        count = len(generation.latents)
        out.append(screen(generation.models.safety, images[start : start + count]))
        start += count
    return out


@torch.no_grad()
def denoise_step(
    models: Models, generations: Sequence[Generation], fast: "FastGenerator | None" = None
) -> dict[Generation, Exception]:
    """One denoising step for every unfinished request given (see the module docstring). Returns the requests that
    failed, with their exception: a shared call that raises is retried request by request, so only the request at
    fault fails; the others have taken their step."""
    groups: dict[tuple, list[Generation]] = {}
    for generation in generations:
        if not generation.done:
            groups.setdefault(generation.key(), []).append(generation)
    failures: dict[Generation, Exception] = {}
    predicted = {}
    for members in groups.values():
        for generation, noise in zip(members, _together_or_alone(members, lambda ms: _predict(models, ms, fast))):
            if isinstance(noise, Exception):
                failures[generation] = noise
            else:
                predicted[generation] = noise
    return failures | _advance_all(predicted)


def _advance_all(predicted: dict[Generation, torch.Tensor]) -> dict[Generation, Exception]:
    """Each request's scheduler step; the planned ones of one latent shape (and solver order) in one
    (unipc_plan.step_together), retried request by request if it raises (it has written nothing then)."""
    shared: dict[tuple, list[Generation]] = {}
    failures = {}
    for generation, noise in predicted.items():
        if generation.planned is not None:
            latents, inputs = generation.latents, generation.planned.maps.shape[2]
            shared.setdefault((tuple(latents.shape[1:]), latents.dtype, latents.device, inputs), []).append(generation)
            continue
        try:
            generation.advance(noise)
        except Exception as error:  # noqa: BLE001
            failures[generation] = error
    for members in shared.values():
        outcomes = _together_or_alone(members, lambda ms: _step_planned(ms, [predicted[g] for g in ms]))
        failures |= {g: outcome for g, outcome in zip(members, outcomes) if isinstance(outcome, Exception)}
    return failures


def _step_planned(members: list[Generation], noises: list[torch.Tensor]) -> list[torch.Tensor]:
    following = unipc_plan.step_together(
        [g.planned for g in members], [g.step_index for g in members], [g.latents for g in members], noises
    )
    for generation, latents in zip(members, following):
        generation.latents = latents
        generation.step_index += 1
    return following


def _predict(models: Models, members: list[Generation], fast: "FastGenerator | None" = None) -> list[torch.Tensor]:
    """The UNet's (and ControlNet's) prediction for every member's rows, in one call (a captured graph's, when
    `fast` holds one for these rows)."""
    inputs = [g.model_input() for g in members]
    sizes = [len(x) for x in inputs]
    sample = torch.cat(inputs)
    timesteps = torch.cat([g.timesteps[g.step_index].expand(n) for g, n in zip(members, sizes)])
    embeddings = torch.cat([g.embeddings for g in members])
    index = torch.cat([torch.full((n,), g.slot, dtype=torch.long) for g, n in zip(members, sizes)])
    if fast is not None:
        control = scale = None
        if members[0].control is not None:
            control = torch.cat([g.control for g in members])
            scale = torch.cat([g.control_scale for g in members]).to(sample.dtype)
        noise = fast.predict(sample, timesteps, embeddings, index, control, scale)
        if noise is not None:
            return list(noise.split(sizes))
    extra = {}
    if members[0].control is not None:
        # conditioning_scale 1, then each request's own scale per row: the same products the pipeline takes.
        down, mid = models.controlnet(
            sample, timesteps, encoder_hidden_states=embeddings,
            controlnet_cond=torch.cat([g.control for g in members]), conditioning_scale=1.0, guess_mode=False,
            return_dict=False,
        )
        scale = torch.cat([g.control_scale for g in members]).to(sample.dtype)
        extra = dict(
            down_block_additional_residuals=[d * scale for d in down],
            mid_block_additional_residual=mid * scale,
        )
    with models.slots.use(index):
        noise = models.pipe.unet(sample, timesteps, encoder_hidden_states=embeddings, return_dict=False, **extra)[0]
    return list(noise.split(sizes))

"""The engine's operations on the shared models, independent of how requests arrive."""

import logging
import random
import threading
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Protocol

import diffusers
import peft
import torch
import transformers
from PIL import Image

from .checkpoint import Checkpoints, default_folder, fingerprint
from .config import EngineConfig
from . import fast_train
from .fast import FastGenerator, inductor_cache, settings_from_env
from .generate import LoraCache, generate
from .images import load_photos, open_rgb, png_many, save_pngs
from .models import load_models
from .previews import paint_with_peft, preview_steps
from .safety import Screened
from .protocol import MAX_SEED, GenerateRequest, GenerateResult, PongResult, TrainParams, TrainRequest, TrainResult
from .train import Training, resolve_params, training_session

log = logging.getLogger(__name__)

# Called after every optimizer step with the job's live state (the experiment runner samples images from it).
StepObserver = Callable[[Training], None]


class JobContext(Protocol):
    """How a running job reports progress and learns it was cancelled."""

    def check_cancel(self) -> None:
        """Raises Cancelled once the job has been cancelled."""

    def progress(self, step: int, total: int, loss: float | None = None) -> None: ...

    def preview(self, step: int, total: int, image: str) -> None:
        """A preview PNG painted after `step` (called only for requests that ask for previews)."""


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.models = load_models(config)
        self.loras = LoraCache(self.models.pipe)
        self.fast: FastGenerator | None = None
        self.warmup: dict | None = None  # what the ready event reports about the fast path
        self.fast_training = config.use_fast  # LoRA steps in a CUDA graph where fast_train accepts the job
        if config.use_fast:
            inductor_cache(config.cache_dir)
            try:
                self.fast = FastGenerator(self.models, settings_from_env(), cache_dir=config.cache_dir)
                self.warmup = self.fast.warm_up()
            except Exception as error:  # noqa: BLE001
                # Without graphs the engine is slower, not broken: serve eagerly and say why in the ready event.
                log.exception("fast path warm-up failed; generating eagerly")
                self.fast = None
                self.warmup = {"fast": False, "error": f"{type(error).__name__}: {error}"[:500]}
        # Jobs share one UNet (and its adapters): they must never overlap, whoever calls them.
        self._job_lock = threading.Lock()

    @property
    def upgrading(self) -> bool:
        """Compiled modules are still being built in other processes (fast.FastGenerator.upgrade)."""
        return self.fast is not None and self.fast.building

    def upgrade(self) -> None:
        """Swaps in the compiled modules whose builds have ended; between jobs' steps only (the server's loop)."""
        if self.fast is not None and self.fast.upgrade():
            self.warmup = self.fast.info

    def ping(self, request_id: str) -> PongResult:
        return PongResult(
            id=request_id,
            profile=self.config.profile,
            device=str(self.config.device),
            versions={
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
        )

    def train(self, request: TrainRequest, ctx: JobContext, observer: StepObserver | None = None) -> TrainResult:
        started = time.monotonic()
        models = self.models
        params, photos, class_photos, checkpoints = self.prepare_training(request)
        with self._job_lock:
            self.loras.clear()
            with training_session(models, params, photos, class_photos) as training:
                stepper = training
                why = fast_train.refusal(params, models.device, class_photos is not None)
                if self.fast_training and why is None:
                    stepper = fast_train.GraphedStep(training)
                elif self.fast_training:
                    log.info("training %s steps eagerly: %s", request.id, why)
                resumed_from = resume(training, checkpoints)
                previews = preview_steps(params.max_steps, request.previews) if params.mode == "lora" else []
                while training.step_count < params.max_steps:
                    ctx.check_cancel()
                    loss = stepper.step()
                    ctx.progress(training.step_count, params.max_steps, loss)
                    if training.step_count in previews:
                        image = paint_with_peft(models, request, params, training.step_count)
                        if image is not None:
                            ctx.preview(training.step_count, params.max_steps, image)
                    if observer is not None:
                        observer(training)
                    checkpoint(training, checkpoints)
                ctx.check_cancel()
                result = finish_training(request, training, checkpoints, started, resumed_from)
        return result

    def prepare_training(
        self, request: TrainRequest
    ) -> tuple[TrainParams, torch.Tensor, torch.Tensor | None, Checkpoints | None]:
        """A train request's resolved parameters, photos, class photos and checkpoint folder (or None)."""
        models = self.models
        photos = load_photos(request.photos, request.params.resolution)
        class_photos = load_photos(request.class_photos, request.params.resolution) if request.class_photos else None
        params = resolve_params(
            request.params, models.dtype, self.config.profile, len(photos), 0 if class_photos is None else len(class_photos)
        )
        checkpoints = None
        if params.checkpoint_steps is not None:
            folder = Path(request.checkpoint_dir) if request.checkpoint_dir else default_folder(Path(request.output))
            job = fingerprint(
                params, request.photos, request.class_photos or [], models.base_hash, str(models.device), str(models.dtype)
            )
            checkpoints = Checkpoints(folder, job)
        return params, photos, class_photos, checkpoints

    def generation_inputs(self, request: GenerateRequest) -> tuple[int, Image.Image | None]:
        """The request's seed (drawn when it has none) and its opened control image."""
        seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED)
        return seed, open_rgb(request.control_image) if request.control_image else None

    def generate(self, request: GenerateRequest, ctx: JobContext) -> GenerateResult:
        started = time.monotonic()
        seed, control = self.generation_inputs(request)

        def on_step(step: int, total: int) -> None:
            ctx.check_cancel()
            ctx.progress(step, total)

        with self._job_lock:
            images = generate(self.models, self.loras, request, seed, control, on_step)
        return finish_generation(request, images, seed, started)


def resume(training: Training, checkpoints: Checkpoints | None) -> int | None:
    """Loads the newest matching checkpoint into `training`; returns the step it resumed from."""
    if checkpoints is not None and (state := checkpoints.latest()) is not None:
        training.load_state_dict(state)
        return training.step_count
    return None


def checkpoint(training: Training, checkpoints: Checkpoints | None) -> None:
    """Saves a checkpoint after a step when one is due (never after the last: the output follows)."""
    params = training.params
    if checkpoints is not None and training.step_count % params.checkpoint_steps == 0 \
            and training.step_count < params.max_steps:
        checkpoints.save(training.state_dict(), training.save_lora)


def finish_training(
    request: TrainRequest, training: Training, checkpoints: Checkpoints | None, started: float, resumed_from: int | None
) -> TrainResult:
    """Writes the job's output files, drops its checkpoints and describes the result."""
    kohya = training.save(Path(request.output))
    if checkpoints is not None:
        checkpoints.clear()
    losses = training.losses
    return TrainResult(
        id=request.id,
        output=request.output,
        kohya_output=None if kohya is None else str(kohya),
        steps=len(losses),
        final_loss=losses[-1],
        losses=losses,
        seconds=time.monotonic() - started,
        params=training.params,
        resumed_from=resumed_from,
        warnings=training.warnings,
    )


def encode_together(outputs: Sequence[Screened]) -> list[list[bytes]]:
    """The PNG files of several requests' images (those the safety check let through), made at once
    (images.png_many): for finish_generation, when requests end on one step."""
    kept = [[image for image in images if image is not None] for images in outputs]
    files = iter(png_many([image for images in kept for image in images]))
    return [[next(files) for _ in images] for images in kept]


def finish_generation(request: GenerateRequest, images: Screened, seed: int, started: float,
                      encoded: Sequence[bytes] | None = None) -> GenerateResult:
    """Writes the images the safety check let through (a withheld one is never written) and names the others;
    `encoded`: their PNG files, from encode_together."""
    paths = save_pngs([image for image in images if image is not None], Path(request.output_dir), encoded)
    flagged = [index for index, image in enumerate(images) if image is None]
    return GenerateResult(id=request.id, images=paths, flagged=flagged, seed=seed, seconds=time.monotonic() - started)

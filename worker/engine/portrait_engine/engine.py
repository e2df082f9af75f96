"""The engine's operations on the shared models, independent of how requests arrive."""

import random
import threading
import time
from pathlib import Path
from typing import Protocol

import diffusers
import peft
import torch
import transformers

from .config import EngineConfig
from .generate import LoraCache, generate
from .images import load_photos, open_rgb, save_pngs
from .models import load_models
from .protocol import MAX_SEED, GenerateRequest, GenerateResult, PongResult, TrainRequest, TrainResult
from .train import lora_training, resolve_mixed_precision


class JobContext(Protocol):
    """How a running job reports progress and learns it was cancelled."""

    def check_cancel(self) -> None:
        """Raises Cancelled once the job has been cancelled."""

    def progress(self, step: int, total: int, loss: float | None = None) -> None: ...


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.models = load_models(config)
        self.loras = LoraCache(self.models.pipe)
        # Jobs share one UNet (and its adapters): they must never overlap, whoever calls them.
        self._job_lock = threading.Lock()

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

    def train(self, request: TrainRequest, ctx: JobContext) -> TrainResult:
        started = time.monotonic()
        params = request.params.model_copy(
            update={"mixed_precision": resolve_mixed_precision(request.params.mixed_precision, self.models.dtype)}
        )
        photos = load_photos(request.photos, params.resolution)
        losses: list[float] = []
        with self._job_lock:
            self.loras.clear()
            with lora_training(self.models, params, photos) as training:
                for step in range(1, params.max_steps + 1):
                    ctx.check_cancel()
                    losses.append(training.step())
                    ctx.progress(step, params.max_steps, losses[-1])
                ctx.check_cancel()
                training.save(Path(request.output))
        return TrainResult(
            id=request.id,
            output=request.output,
            steps=len(losses),
            final_loss=losses[-1],
            losses=losses,
            seconds=time.monotonic() - started,
            params=params,
        )

    def generate(self, request: GenerateRequest, ctx: JobContext) -> GenerateResult:
        started = time.monotonic()
        seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED)
        control = open_rgb(request.control_image) if request.control_image else None

        def on_step(step: int, total: int) -> None:
            ctx.check_cancel()
            ctx.progress(step, total)

        with self._job_lock:
            images = generate(self.models, self.loras, request, seed, control, on_step)
        paths = save_pngs(images, Path(request.output_dir))
        return GenerateResult(id=request.id, images=paths, seed=seed, seconds=time.monotonic() - started)

"""A LoRA job's optimizer step captured in one CUDA graph: latent sampling from the cached photo statistics, noise and
timesteps from the job's own CUDA generator, forward and backward under autocast (its weight cache off, as capture
needs), fp16 loss scaling kept on the device, gradient clipping and a fused, capturable AdamW.

It computes Training.step()'s step (train.py) for the jobs it accepts (`refusal`): UNet LoRA without a trained text
encoder, prior preservation, min-SNR, 8-bit Adam or checkpoints. Each distinct window shape (micro-batch sizes of
one step: an epoch's last window may be short) gets its own graph, captured when first needed.
"""

import logging
import math

import torch

from .errors import EngineError
from .protocol import TrainParams
from .train import ADAM, MAX_GRAD_NORM, Training

log = logging.getLogger(__name__)

WARMUP_STEPS = 2  # eager steps on a side stream before capture (then undone), as torch.cuda.graph requires
GROWTH, BACKOFF, INTERVAL = 2.0, 0.5, 2000  # torch.amp.GradScaler's defaults


def refusal(params: TrainParams, device: torch.device, has_class_photos: bool) -> str | None:
    """Why a job must train eagerly, or None when the graphed step serves it."""
    if device.type != "cuda":
        return "no CUDA"
    for reason, refused in (
        ("full-UNet mode", params.mode != "lora"),
        ("text-encoder training", params.train_text_encoder),
        ("prior preservation", has_class_photos),
        ("min-SNR weighting", params.snr_gamma is not None),
        ("8-bit Adam", params.use_8bit_adam),
        ("checkpoints", params.checkpoint_steps is not None),
    ):
        if refused:
            return reason
    return None


class GraphedStep:
    """Drives a Training through captured graphs: `step()` has Training.step()'s contract (windows, losses,
    step_count, LR schedule, divergence check), and the Training's optimizer and scaler are replaced by device-side
    ones, so save() and metadata() keep working."""

    def __init__(self, training: Training):
        self.t = training
        params, device = training.params, training.device
        self.device = device
        self.trainable = training.trainable
        # lr as a tensor so the LR schedule can move it without recapturing; fused + capturable for capture.
        self.lr = torch.tensor(params.learning_rate, device=device)
        training.optimizer = torch.optim.AdamW(self.trainable, lr=self.lr, fused=True, capturable=True, **ADAM)
        from diffusers.optimization import get_scheduler

        training.lr_scheduler = get_scheduler(
            params.lr_scheduler, optimizer=training.optimizer,
            num_warmup_steps=params.lr_warmup_steps, num_training_steps=params.max_steps,
        )
        self.scaling = params.mixed_precision == "fp16"
        # 0-dim, as GradScaler keeps them (the fused kernel and _amp_update_scale_ expect that shape).
        self.scale = torch.full((), 2.0**16 if self.scaling else 1.0, device=device)
        self.growth_tracker = torch.zeros((), device=device, dtype=torch.int32)
        self.found_inf = torch.zeros((), device=device)
        training.optimizer.found_inf = self.found_inf  # the fused kernel skips the update when it is set
        training.autocast_cache = False
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self.capture_seconds = 0.0

    def _body(self, indices: list[torch.Tensor]) -> torch.Tensor:
        t = self.t
        t.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for index in indices:
            mean, std = t.latent_mean[index], t.latent_std[index]
            latents = (mean + std * t.random.normal(mean.shape, mean.dtype)) * t.models.pipe.vae.config.scaling_factor
            noise = t.random.normal(latents.shape, latents.dtype)
            if t.params.noise_offset:
                noise = noise + t.params.noise_offset * t.random.normal((*latents.shape[:2], 1, 1), torch.float32)
            timesteps = t.random.integers(t.noise_scheduler.config.num_train_timesteps, len(latents))
            loss = t.loss(latents, noise, timesteps)
            (loss * self.scale / t.params.grad_accum).backward()
            total = total + loss.detach()
        grads = [p.grad for p in self.trainable]
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found_inf, self.scale.reciprocal())
        torch.nn.utils.clip_grad_norm_(self.trainable, MAX_GRAD_NORM, foreach=True)
        t.optimizer.step()
        if self.scaling:
            torch._amp_update_scale_(self.scale, self.growth_tracker, self.found_inf, GROWTH, BACKOFF, INTERVAL)
        return torch.stack([total / len(indices), self.found_inf])

    def _capture(self, shape: tuple[int, ...]):
        import time

        started = time.monotonic()
        t = self.t
        indices = [torch.zeros(size, device=self.device, dtype=torch.long) for size in shape]
        # Warm-up runs real optimizer steps: remember everything they change and put it back afterwards.
        weights = [p.detach().clone() for p in self.trainable]
        random_state = t.random.on_device.get_state()
        scale, tracker = self.scale.clone(), self.growth_tracker.clone()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self._body(indices)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        with torch.no_grad():
            for p, w in zip(self.trainable, weights):
                p.copy_(w)
            for state in t.optimizer.state.values():
                for value in state.values():
                    value.zero_()  # exp_avg, exp_avg_sq and step: a fresh optimizer
        self.scale.copy_(scale)
        self.growth_tracker.copy_(tracker)
        t.random.on_device.set_state(random_state)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(t.random.on_device)
        # A private pool per window shape: each graph's gradients live in its own memory.
        with torch.cuda.graph(graph):
            out = self._body(indices)
        torch.cuda.synchronize(self.device)
        self.capture_seconds += time.monotonic() - started
        log.info("captured the training step for window %s in %.1f s", shape, time.monotonic() - started)
        return graph, indices, out

    def step(self) -> float:
        t = self.t
        window = t.windows.next()
        photos = [[i % len(t.latent_mean) for i in batch] for batch in window]
        shape = tuple(len(batch) for batch in photos)
        if shape not in self.graphs:
            self.graphs[shape] = self._capture(shape)
        graph, indices, out = self.graphs[shape]
        for buffer, batch in zip(indices, photos):
            buffer.copy_(torch.tensor(batch), non_blocking=True)
        graph.replay()
        loss, skipped = out.tolist()  # the one sync per step: progress needs the loss
        if not skipped:  # accelerate leaves the LR schedule alone on a skipped (inf) step
            t.lr_scheduler.step()
        if not math.isfinite(loss):
            raise EngineError("internal", f"training diverged (loss {loss}); try a lower learning_rate")
        t.step_count += 1
        t.losses.append(loss)
        return loss

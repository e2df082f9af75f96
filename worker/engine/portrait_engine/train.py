"""DreamBooth-LoRA training on the shared UNet.

Follows the semantics of diffusers' examples/dreambooth/train_dreambooth_lora.py (no prior preservation, no text
encoder training, center crop): peft LoRA with gaussian init on the UNet attention projections, DDPM forward noise at
uniform random timesteps, MSE against the noise, AdamW with gradient clipping and a diffusers LR schedule, gradient
accumulation as accelerate does it, LoRA parameters in float32 under mixed precision.

Unlike the script, the photos go through the VAE only once per job: the latent distribution (mean, std) is cached
and a fresh latent is drawn from it for every micro-batch, which is exactly what `latent_dist.sample()` on each step
computes. The instance prompt's embedding is cached too (the script's --pre_compute_text_embeddings).
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from .errors import EngineError
from .models import Models
from .protocol import MixedPrecision, TrainParams

ADAPTER = "dreambooth"
MAX_GRAD_NORM = 1.0
ADAMW = dict(betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
VAE_CHUNK = 4  # photos per VAE encode, to bound activation memory at high resolution

_AUTOCAST = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
_NATIVE = {torch.float32: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}


def resolve_mixed_precision(requested: MixedPrecision | None, dtype: torch.dtype) -> MixedPrecision:
    """Mixed precision for a job on a base model loaded in `dtype`.

    The shared base weights are never re-cast per job: a float32 base accepts any autocast, a half-precision base
    only its own precision (the script would cast the frozen weights to that dtype anyway).
    """
    native = _NATIVE[dtype]
    if requested is None:
        return native
    if native != "no" and requested != native:
        raise EngineError("bad_request", f"the base model is loaded in {dtype}; mixed_precision must be {native!r}")
    return requested


@contextmanager
def lora_training(models: Models, params: TrainParams, photos: torch.Tensor) -> Iterator["LoraTraining"]:
    """Adds a fresh adapter to the shared UNet for the duration of one job, then removes every LoRA layer so the
    UNet is exactly the base model again. The caller must have unloaded any other adapters first and resolved
    `params.mixed_precision` (see resolve_mixed_precision)."""
    unet = models.pipe.unet
    config = LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,
        init_lora_weights="gaussian",
        target_modules=list(params.target_modules),
    )
    # The job's seed decides the LoRA's random init too (the script seeds everything up front), without
    # disturbing the process-wide RNG.
    with torch.random.fork_rng(devices=[models.device] if models.device.type == "cuda" else []):
        torch.manual_seed(params.seed)
        unet.add_adapter(config, adapter_name=ADAPTER)
    try:
        unet.train()
        yield LoraTraining(models, params, photos)
    finally:
        unet.unload_lora()
        unet.eval()


class LoraTraining:
    """The state of one job: cached latents and prompt embedding, optimizer, LR schedule and random stream."""

    def __init__(self, models: Models, params: TrainParams, photos: torch.Tensor):
        pipe = models.pipe
        self.unet = pipe.unet
        self.params = params
        self.device = models.device
        self.autocast_dtype = _AUTOCAST[params.mixed_precision]
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        # One CPU generator drives shuffling, latent sampling, noise and timesteps: a job is reproducible from its
        # seed on any device.
        self.generator = torch.Generator("cpu").manual_seed(params.seed)

        cast_training_params(self.unet, dtype=torch.float32)
        self.trainable = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=params.learning_rate, **ADAMW)
        self.lr_scheduler = get_scheduler(
            params.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=params.lr_warmup_steps,
            num_training_steps=params.max_steps,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=params.mixed_precision == "fp16")

        self.latent_mean, self.latent_std = _encode_photos(pipe, photos.to(self.device))
        self.text_embedding = _encode_prompt(pipe, params.instance_prompt, self.device)
        self._windows = self._accumulation_windows(len(photos))

    def step(self) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns their mean loss."""
        losses = []
        window = next(self._windows)
        for indices in window:
            latents = self._sample_latents(indices)
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
            timesteps = torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (len(indices),), generator=self.generator
            ).to(self.device)
            loss = self.loss(latents, noise, timesteps)
            # accelerate divides by the configured accumulation even when an epoch's last window is shorter.
            self.scaler.scale(loss / self.params.grad_accum).backward()
            losses.append(loss.item())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        mean = sum(losses) / len(losses)
        if not torch.isfinite(torch.tensor(mean)):
            raise EngineError("internal", f"training diverged (loss {mean}); try a lower learning_rate")
        return mean

    def loss(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The DreamBooth objective for scaled latents, their noise and timesteps."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        embedding = self.text_embedding.expand(len(latents), -1, -1)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            prediction = self.unet(noisy.to(self.unet.dtype), timesteps, embedding, return_dict=False)[0]
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")

    def save(self, output: Path) -> None:
        """Writes the LoRA where `StableDiffusionPipeline.load_lora_weights(output)` reads it, atomically."""
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name=ADAPTER))
        # The adapter's shape travels in the file's metadata, so an alpha other than the rank survives loading.
        # Only these fields: a full peft config dump would not load with another peft version.
        config = self.unet.peft_config[ADAPTER]
        metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent)
        try:
            StableDiffusionPipeline.save_lora_weights(
                tmp, unet_lora_layers=layers, weight_name=output.name, unet_lora_adapter_metadata=metadata
            )
            os.replace(Path(tmp, output.name), output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _sample_latents(self, indices: list[int]) -> torch.Tensor:
        mean, std = self.latent_mean[indices], self.latent_std[indices]
        return mean + std * torch.randn(mean.shape, generator=self.generator).to(self.device)

    def _accumulation_windows(self, count: int) -> Iterator[list[list[int]]]:
        # A shuffled DataLoader (drop_last=False) under accelerate: batches of `batch_size` photos, `grad_accum`
        # batches per optimizer step, and an epoch's leftover batches still make one (shorter) step.
        batch, accum = self.params.batch_size, self.params.grad_accum
        while True:
            order = torch.randperm(count, generator=self.generator).tolist()
            batches = [order[i : i + batch] for i in range(0, count, batch)]
            for i in range(0, len(batches), accum):
                yield batches[i : i + accum]


@torch.no_grad()
def _encode_photos(pipe: StableDiffusionPipeline, photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each photo's latent distribution, already multiplied by the VAE's scaling factor."""
    vae = pipe.vae
    means, stds = [], []
    for chunk in photos.split(VAE_CHUNK):
        dist = vae.encode(chunk.to(vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    scale = vae.config.scaling_factor
    return torch.cat(means) * scale, torch.cat(stds) * scale


@torch.no_grad()
def _encode_prompt(pipe: StableDiffusionPipeline, prompt: str, device: torch.device) -> torch.Tensor:
    tokens = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return pipe.text_encoder(tokens.input_ids.to(device), return_dict=False)[0]

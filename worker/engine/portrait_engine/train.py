"""DreamBooth training on the shared models: a LoRA (diffusers' examples/dreambooth/train_dreambooth_lora.py) or the
full UNet (train_dreambooth.py), with those scripts' semantics.

Per micro-batch: a latent sampled from each photo's VAE distribution, DDPM forward noise (optionally offset) at
uniform random timesteps, MSE against the noise (or velocity), optionally min-SNR weighted, plus the prior loss on
class photos when there are any; AdamW (or 8-bit AdamW) with gradient clipping at 1.0 and a diffusers LR schedule;
gradient accumulation, loss scaling and LR stepping as accelerate does them; trainable parameters in float32 under
fp16/bf16 autocast.

Unlike the scripts, each photo goes through the VAE once per job: its latent distribution (mean, std) is cached and
a latent is sampled from it for every micro-batch, exactly what the scripts' per-step `latent_dist.sample()`
computes. Prompt embeddings are cached too (the scripts' --pre_compute_text_embeddings) unless the text encoder is
trained.

Random numbers follow the scripts' consumption order from private generators (see ReferenceRandom), so a job with
seed S draws what `--seed S` draws: on identical weights and data the per-step losses and trained weights match the
reference's up to float rounding (bench/compare_training.py measures it).
"""

import gc
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params, compute_snr
from peft import LoraConfig, inject_adapter_in_model

from .errors import EngineError
from .export import kohya_path, write_kohya, write_lora, write_unet
from .models import TEXT_ENCODER_TARGETS, Models
from .protocol import MixedPrecision, TrainParams

log = logging.getLogger(__name__)

ADAPTER = "dreambooth"
MAX_GRAD_NORM = 1.0
ADAM = dict(betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
VAE_CHUNK = 4  # photos per VAE encode, to bound activation memory at high resolution
DEFAULT_LEARNING_RATE = {"lora": 1e-4, "full": 5e-6}  # the seed's
MIN_REAL_RESOLUTION = 512  # SD1.5's own; the seed lost likeness training below it
MAX_STEPS = 20_000

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


def dataset_length(photo_count: int, class_count: int) -> int:
    # The scripts' DreamBoothDataset: with class images, max of both counts, each side indexed modulo its count.
    return max(photo_count, class_count)


def steps_per_epoch(params: TrainParams, length: int) -> int:
    # A DataLoader of `length` examples (drop_last=False) and accelerate's accumulation: a short last window counts.
    return math.ceil(math.ceil(length / params.batch_size) / params.grad_accum)


def resolve_params(
    params: TrainParams, dtype: torch.dtype, profile: str, photo_count: int, class_count: int = 0
) -> TrainParams:
    """The job's parameters with every engine-decided value filled in (what the result reports)."""
    if profile == "real" and params.resolution < MIN_REAL_RESOLUTION:
        raise EngineError("bad_request", f"resolution {params.resolution} is below {MIN_REAL_RESOLUTION}")
    max_steps = params.max_steps
    if params.epochs is not None:
        max_steps = params.epochs * steps_per_epoch(params, dataset_length(photo_count, class_count))
        if max_steps > MAX_STEPS:
            raise EngineError("bad_request", f"{params.epochs} epochs are {max_steps} steps, above {MAX_STEPS}")
    return params.model_copy(
        update=dict(
            mixed_precision=resolve_mixed_precision(params.mixed_precision, dtype),
            learning_rate=params.learning_rate or DEFAULT_LEARNING_RATE[params.mode],
            max_steps=max_steps,
        )
    )


class ReferenceRandom:
    """The random numbers the dreambooth scripts draw after `set_seed(seed)`, in their order, from private
    generators (the process's global ones stay untouched):

    - CPU: the LoRA's initialization (peft initializes adapters on the CPU, before moving them), then at the start of
      every epoch the DataLoader iterator's base seed and the RandomSampler's seed, whose own generator shuffles;
    - the training device (the same CPU generator on CPU; on CUDA that device's generator seeded with `seed`), per
      micro-batch: the latent sample, the noise (then its offset), the timesteps.
    """

    def __init__(self, seed: int, device: torch.device, cpu_state: torch.Tensor):
        self.device = device
        self.cpu = torch.Generator("cpu")
        self.cpu.set_state(cpu_state)
        self.on_device = self.cpu if device.type == "cpu" else torch.Generator(device).manual_seed(seed)

    def epoch_order(self, length: int) -> list[int]:
        self._int64()  # the DataLoader iterator's _base_seed (only worker processes would use it)
        sampler = torch.Generator().manual_seed(self._int64())
        return torch.randperm(length, generator=sampler).tolist()

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=self.on_device, device=self.device, dtype=dtype)

    def integers(self, high: int, count: int) -> torch.Tensor:
        return torch.randint(0, high, (count,), generator=self.on_device, device=self.device)

    def state_dict(self) -> dict:
        return {"cpu": self.cpu.get_state(), "device": self.on_device.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.cpu.set_state(state["cpu"])
        self.on_device.set_state(state["device"])

    def _int64(self) -> int:
        return int(torch.empty((), dtype=torch.int64).random_(generator=self.cpu).item())


class EpochWindows:
    """A shuffled DataLoader (batch_size, drop_last=False) under accelerate's gradient accumulation: each call to
    `next` gives one optimizer step's micro-batches; an epoch's leftover batches make one shorter step. Its state is
    three plain values, so a checkpoint can restore it."""

    def __init__(self, length: int, params: TrainParams, random: ReferenceRandom):
        self.length, self.batch, self.accum, self.random = length, params.batch_size, params.grad_accum, random
        self.epoch, self.order, self.position = 0, [], 0

    def next(self) -> list[list[int]]:
        windows = self._windows()
        if self.position >= len(windows):
            self.order, self.position, self.epoch = self.random.epoch_order(self.length), 0, self.epoch + 1
            windows = self._windows()
        self.position += 1
        return windows[self.position - 1]

    def _windows(self) -> list[list[list[int]]]:
        batches = [self.order[i : i + self.batch] for i in range(0, len(self.order), self.batch)]
        return [batches[i : i + self.accum] for i in range(0, len(batches), self.accum)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "order": list(self.order), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.order, self.position = state["epoch"], list(state["order"]), state["position"]


@contextmanager
def training_session(
    models: Models, params: TrainParams, photos: torch.Tensor, class_photos: torch.Tensor | None = None
) -> Iterator["Training"]:
    """Sets up one job on the shared models and undoes it afterwards, whatever happens.

    lora: fresh adapters on the shared UNet (and text encoder); afterwards every LoRA layer is removed, so the
    models are exactly the base again. full: a float32 UNet reloaded from the base folder (as the script trains it),
    dropped afterwards. `params` must be resolved (resolve_params); the caller must have unloaded other adapters.
    """
    pipe = models.pipe
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(params.seed)  # set_seed's CPU side; CUDA is seeded in ReferenceRandom
        if params.mode == "lora":
            unet = pipe.unet
            unet.add_adapter(_lora_config(params, list(params.target_modules)), adapter_name=ADAPTER)
            if params.train_text_encoder:
                # peft directly: transformers' own add_adapter demands a newer peft than some pins have; the layers,
                # their initialization and the saved keys are the same.
                inject_adapter_in_model(_lora_config(params, TEXT_ENCODER_TARGETS), pipe.text_encoder, ADAPTER)
        else:
            unet = UNet2DConditionModel.from_pretrained(
                models.base_path, subfolder="unet", dtype=torch.float32, local_files_only=True
            ).to(models.device)
            unet.set_attn_processor(AttnProcessor2_0())
            unet.requires_grad_(True)
        cpu_state = torch.get_rng_state()
    training = None
    try:
        random = ReferenceRandom(params.seed, models.device, cpu_state)
        training = Training(models, params, unet, photos, class_photos, random)
        yield training
    finally:
        if params.mode == "lora":
            pipe.unload_lora_weights()
        for module in (pipe.unet, pipe.text_encoder):
            module.requires_grad_(False).eval()
        del training, unet
        free_memory(models.device)


def free_memory(device: torch.device) -> None:
    """Gives a finished (or cancelled) job's memory back, so the next one and other processes can have it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _lora_config(params: TrainParams, targets: list[str]) -> LoraConfig:
    return LoraConfig(r=params.rank, lora_alpha=params.alpha, init_lora_weights="gaussian", target_modules=targets)


class Training:
    """The state of one job: cached latents and embeddings, optimizer, LR schedule, loss scaler, random streams and
    data order; `step()` runs one optimizer step, `state_dict()` / `load_state_dict()` checkpoint all of it."""

    def __init__(
        self,
        models: Models,
        params: TrainParams,
        unet: UNet2DConditionModel,
        photos: torch.Tensor,
        class_photos: torch.Tensor | None,
        random: ReferenceRandom,
    ):
        pipe = models.pipe
        self.models, self.params, self.unet, self.random = models, params, unet, random
        self.device = models.device
        self.text_encoder = pipe.text_encoder if params.train_text_encoder else None
        self.autocast_dtype = _AUTOCAST[params.mixed_precision]
        self.autocast_cache = True  # a CUDA-graph capture needs it off (fast_train.py)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.warnings: list[str] = []
        self.step_count = 0
        self.losses: list[float] = []

        self.trainable = self._prepare_trainable()
        self.optimizer = self._optimizer()
        self.lr_scheduler = get_scheduler(
            params.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=params.lr_warmup_steps,
            num_training_steps=params.max_steps,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=params.mixed_precision == "fp16")

        self.latent_mean, self.latent_std = _encode_photos(pipe, photos.to(self.device))
        self.prompt_tokens = _tokens(pipe, params.instance_prompt).to(self.device)
        self.prompt_embedding = _encode(pipe.text_encoder, self.prompt_tokens)
        self.prior = class_photos is not None
        if self.prior:
            self.class_mean, self.class_std = _encode_photos(pipe, class_photos.to(self.device))
            self.class_tokens = _tokens(pipe, params.class_prompt).to(self.device)
            self.class_embedding = _encode(pipe.text_encoder, self.class_tokens)
        length = dataset_length(len(photos), len(class_photos) if self.prior else 0)
        self.windows = EpochWindows(length, params, random)

    def _prepare_trainable(self) -> list[torch.nn.Parameter]:
        self.unet.train()
        if self.text_encoder is not None:
            self.text_encoder.train()
        if self.params.mode == "lora":
            # LoRA weights train in float32 whatever the base's precision (the script: cast_training_params).
            cast_training_params([m for m in (self.unet, self.text_encoder) if m is not None], dtype=torch.float32)
        trainable = [p for p in self.unet.parameters() if p.requires_grad]
        if self.text_encoder is not None:
            trainable += [p for p in self.text_encoder.parameters() if p.requires_grad]
        return trainable

    def step(self) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns their mean loss."""
        losses = []
        for indices in self.windows.next():
            loss = self.loss(*self.draw(indices), prior=self.prior)
            self.scaled(loss).backward()
            losses.append(loss.item())
        return self.finish_step(losses)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """What a micro-batch's loss contributes to the backward pass (loss scaling, accumulation)."""
        # accelerate divides by the configured accumulation even when an epoch's last window is shorter.
        return self.scaler.scale(loss / self.params.grad_accum)

    def finish_step(self, losses: list[float]) -> float:
        """The optimizer step once the micro-batches' gradients are in; returns the step's mean loss."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, MAX_GRAD_NORM)
        scale = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # accelerate leaves the LR schedule where it was when fp16 loss scaling skipped the step (inf gradients).
        if not (self.scaler.is_enabled() and self.scaler.get_scale() < scale):
            self.lr_scheduler.step()
        # train_dreambooth.py zeroes full-UNet gradients (its --set_grads_to_none is off); the LoRA script sets None.
        self.optimizer.zero_grad(set_to_none=self.params.mode == "lora")
        mean = sum(losses) / len(losses)
        if not math.isfinite(mean):
            raise EngineError("internal", f"training diverged (loss {mean}); try a lower learning_rate")
        self.step_count += 1
        self.losses.append(mean)
        return mean

    def draw(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A micro-batch's inputs: scaled latents, noise, timesteps (drawn from the job's generators) and prompt
        embeddings. `indices`: dataset positions, a list or a device tensor (a captured graph's input buffer)."""
        # The scripts' collate order: instance examples, then (prior preservation) their class examples.
        def rows(count: int):
            return indices % count if isinstance(indices, torch.Tensor) else [i % count for i in indices]

        photos = rows(len(self.latent_mean))
        mean, std = self.latent_mean[photos], self.latent_std[photos]
        if self.prior:
            classes = rows(len(self.class_mean))
            mean, std = torch.cat([mean, self.class_mean[classes]]), torch.cat([std, self.class_std[classes]])
        # latent_dist.sample() then the scaling factor, in the VAE's dtype, as the scripts compute it.
        latents = (mean + std * self.random.normal(mean.shape, mean.dtype)) * self.models.pipe.vae.config.scaling_factor
        noise = self.random.normal(latents.shape, latents.dtype)
        if self.params.noise_offset:
            noise = noise + self.params.noise_offset * self.random.normal((*latents.shape[:2], 1, 1), torch.float32)
        timesteps = self.random.integers(self.noise_scheduler.config.num_train_timesteps, len(latents))
        return latents, noise, timesteps, self._embeddings(len(indices))

    def loss(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        embeddings: torch.Tensor | None = None,
        prior: bool = False,
    ) -> torch.Tensor:
        """The DreamBooth objective for scaled latents, their noise and timesteps. With `prior`, the second half of
        the batch are class examples (their loss weighted by prior_loss_weight); `embeddings` default to the
        instance prompt's."""
        if embeddings is None:
            embeddings = self.prompt_embedding.expand(len(latents), -1, -1)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with self._autocast():
            prediction = self.unet(noisy, timesteps, embeddings, return_dict=False)[0]
        return self.objective(prediction, latents, noise, timesteps, prior)

    def objective(
        self, prediction: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prior: bool
    ) -> torch.Tensor:
        """The loss of the UNet's `prediction` for these inputs (see `loss`)."""
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        if not prior:
            return self._instance_loss(prediction, target, timesteps)
        prediction, prior_prediction = prediction.chunk(2)
        target, prior_target = target.chunk(2)
        prior_loss = F.mse_loss(prior_prediction.float(), prior_target.float(), reduction="mean")
        instance = self._instance_loss(prediction, target, timesteps[: len(prediction)])
        return instance + self.params.prior_loss_weight * prior_loss

    def _instance_loss(self, prediction: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.params.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float(), reduction="mean")
        # Min-SNR-gamma weights as train_dreambooth.py computes them (v-prediction floors the SNR weight at one).
        snr = compute_snr(self.noise_scheduler, timesteps)
        divisor = snr + 1 if self.noise_scheduler.config.prediction_type == "v_prediction" else snr
        weights = torch.stack([snr, self.params.snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / divisor
        per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_example * weights).mean()

    def _embeddings(self, count: int) -> torch.Tensor:
        if self.text_encoder is None:
            parts = [self.prompt_embedding.expand(count, -1, -1)]
            if self.prior:
                parts.append(self.class_embedding.expand(count, -1, -1))
            return torch.cat(parts)
        tokens = [self.prompt_tokens.expand(count, -1)]
        if self.prior:
            tokens.append(self.class_tokens.expand(count, -1))
        # A trained text encoder runs every micro-batch, under the same autocast as the UNet (accelerate wraps both).
        with self._autocast():
            return self.text_encoder(torch.cat(tokens), return_dict=False)[0]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None,
                              cache_enabled=self.autocast_cache)

    def _optimizer(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.AdamW
        if self.params.use_8bit_adam:
            try:
                import bitsandbytes

                optimizer = bitsandbytes.optim.AdamW8bit
            except ImportError:
                message = "use_8bit_adam: bitsandbytes is not installed; trained with 32-bit AdamW (more memory)"
                log.warning(message)
                self.warnings.append(message)
        return optimizer(self.trainable, lr=self.params.learning_rate, **ADAM)

    # --- checkpoints and outputs ----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed job needs to continue exactly where this one is."""
        return {
            "step": self.step_count,
            "losses": list(self.losses),
            "weights": {name: tensor.detach().clone() for name, tensor in self._trained_weights().items()},
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "random": self.random.state_dict(),
            "windows": self.windows.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        weights = self._trained_weights()
        if weights.keys() != state["weights"].keys():
            raise ValueError("checkpoint weights do not match this job's")
        with torch.no_grad():
            for name, tensor in weights.items():
                tensor.copy_(state["weights"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.random.load_state_dict(state["random"])
        self.windows.load_state_dict(state["windows"])
        self.step_count, self.losses = state["step"], list(state["losses"])

    def _trained_weights(self) -> dict[str, torch.Tensor]:
        named = {f"unet.{name}": p for name, p in self.unet.named_parameters() if p.requires_grad}
        if self.text_encoder is not None:
            named |= {f"text_encoder.{name}": p for name, p in self.text_encoder.named_parameters() if p.requires_grad}
        return named

    def metadata(self) -> dict:
        return {
            "base_model_sha256": self.models.base_hash,
            "mode": self.params.mode,
            "params": self.params.model_dump(mode="json"),
            "steps": self.step_count,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": self.losses,
        }

    def save_lora(self, path: Path) -> None:
        """The LoRA as it is now (lora mode; a checkpoint's loadable snapshot). Full mode writes nothing here."""
        if self.params.mode == "lora":
            write_lora(path, *self._lora_modules(), ADAPTER, self.metadata())

    def _lora_modules(self) -> tuple:
        """The modules holding the trained peft adapter, as export.write_lora reads them: (unet, text_encoder)."""
        return self.unet, self.text_encoder

    def save(self, output: Path) -> Path | None:
        """Writes the trained weights to `output` (lora: diffusers LoRA; full: the UNet) and, for a LoRA, its kohya
        export beside it, whose path is returned."""
        metadata = self.metadata()
        if self.params.mode == "full":
            write_unet(output, self.unet, metadata)
            return None
        write_lora(output, *self._lora_modules(), ADAPTER, metadata)
        kohya = kohya_path(output)
        write_kohya(kohya, output, metadata, prediction_type=self.noise_scheduler.config.prediction_type)
        return kohya

@torch.no_grad()
def _encode_photos(pipe, photos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of each photo's latent distribution, in the VAE's dtype (not yet scaled)."""
    vae = pipe.vae
    means, stds = [], []
    for chunk in photos.split(VAE_CHUNK):
        dist = vae.encode(chunk.to(vae.dtype)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _tokens(pipe, prompt: str) -> torch.Tensor:
    tokenizer = pipe.tokenizer
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def _encode(text_encoder, tokens: torch.Tensor) -> torch.Tensor:
    return text_encoder(tokens, return_dict=False)[0]

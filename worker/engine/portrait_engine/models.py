"""Loads the base model once per process; requests derive what they need from it."""

import functools
import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import torch
from diffusers import ControlNetModel, StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from .config import EngineConfig
from .errors import EngineError
from .multilora import SlotLoRA
from .protocol import TargetModule
from .safety import SafetyCheck, load_safety_check
from .tiny import ensure_tiny_models

log = logging.getLogger(__name__)

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # the reference's, for --train_text_encoder


@dataclass(frozen=True)
class Models:
    pipe: StableDiffusionPipeline
    controlnet: ControlNetModel | None
    device: torch.device
    dtype: torch.dtype
    # The folder the pipeline was loaded from: full-UNet training reloads the UNet from it in float32.
    base_path: Path
    # Slot layers over the UNet's and the text encoder's LoRA targets (empty slots: exactly the base model).
    slots: SlotLoRA
    # The output check every generated image goes through (None: off).
    safety: SafetyCheck | None = None
    # generate._derive's template pipeline per (scheduler, ControlNet or not): a request copies one.
    pipelines: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def base_hash(self) -> str:
        """sha256 over the base model's weight files, recorded in every trained file's metadata."""
        return _folder_hash(self.base_path)


_lock = threading.Lock()
_loaded: dict[tuple, Models] = {}


def load_models(config: EngineConfig) -> Models:
    """The shared Models for this configuration, loaded on first call (under a lock, so exactly once)."""
    with _lock:
        base, controlnet = _model_paths(config)
        key = (base, controlnet, config.device, config.dtype, config.lora_slots, config.lora_max_rank,
               config.safety, config.safety_checker, config.tiny_safety_flag)
        if key not in _loaded:
            _loaded[key] = _load(base, controlnet, config)
        return _loaded[key]


def _model_paths(config: EngineConfig) -> tuple[Path, Path | None]:
    if config.profile == "tiny":
        return ensure_tiny_models(config.cache_dir)
    for path in (config.base_model, config.controlnet):
        if path is not None and not path.is_dir():
            raise EngineError("not_found", f"model folder {path} does not exist")
    return config.base_model, config.controlnet


def _load(base: Path, controlnet: Path | None, config: EngineConfig) -> Models:
    device, dtype = config.device, config.dtype
    log.info("loading %s (controlnet %s) on %s as %s", base, controlnet, device, dtype)
    pipe = StableDiffusionPipeline.from_pretrained(
        base, dtype=dtype, safety_checker=None, requires_safety_checker=False, local_files_only=True
    ).to(device)
    cn = None
    if controlnet is not None:
        cn = ControlNetModel.from_pretrained(controlnet, dtype=dtype, local_files_only=True).to(device)
    # The base weights are never trained: LoRA layers added on top are the only parameters that take gradients.
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, cn):
        if module is not None:
            module.requires_grad_(False).eval()
    # Memory-efficient attention always: PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels
    # on CUDA), set explicitly so that no loaded config can fall back to the quadratic-memory processor.
    for module in (pipe.unet, pipe.vae, cn):
        if module is not None:
            module.set_attn_processor(AttnProcessor2_0())
    # Trained LoRA weights are float32 (as the scripts keep them), so the slots are too.
    slots = SlotLoRA(config.lora_slots, config.lora_max_rank, device=device, dtype=torch.float32)
    slots.install("unet", pipe.unet, get_args(TargetModule))
    slots.install("text_encoder", pipe.text_encoder, TEXT_ENCODER_TARGETS)
    safety = load_safety_check(config, device, dtype)
    return Models(pipe=pipe, controlnet=cn, device=device, dtype=dtype, base_path=base, slots=slots, safety=safety)


@functools.cache
def _folder_hash(folder: Path) -> str:
    total = hashlib.sha256()
    weights = sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    for path in weights:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 24):
                digest.update(chunk)
        total.update(f"{path.relative_to(folder).as_posix()}:{digest.hexdigest()}\n".encode())
    return total.hexdigest()

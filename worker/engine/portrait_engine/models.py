"""Loads the base model once per process; requests derive what they need from it."""

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ControlNetModel, StableDiffusionPipeline

from .config import EngineConfig
from .errors import EngineError
from .tiny import ensure_tiny_models

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    pipe: StableDiffusionPipeline
    controlnet: ControlNetModel | None
    device: torch.device
    dtype: torch.dtype


_lock = threading.Lock()
_loaded: dict[tuple, Models] = {}


def load_models(config: EngineConfig) -> Models:
    """The shared Models for this configuration, loaded on first call (under a lock, so exactly once)."""
    with _lock:
        base, controlnet = _model_paths(config)
        key = (base, controlnet, config.device, config.dtype)
        if key not in _loaded:
            _loaded[key] = _load(base, controlnet, config.device, config.dtype)
        return _loaded[key]


def _model_paths(config: EngineConfig) -> tuple[Path, Path | None]:
    if config.profile == "tiny":
        return ensure_tiny_models(config.cache_dir)
    for path in (config.base_model, config.controlnet):
        if path is not None and not path.is_dir():
            raise EngineError("not_found", f"model folder {path} does not exist")
    return config.base_model, config.controlnet


def _load(base: Path, controlnet: Path | None, device: torch.device, dtype: torch.dtype) -> Models:
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
    return Models(pipe=pipe, controlnet=cn, device=device, dtype=dtype)

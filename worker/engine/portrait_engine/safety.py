"""The optional output check: diffusers' StableDiffusionSafetyChecker over every image the engine makes.

Loaded once with the models (on their device and dtype) when configured; each request's decoded images go through
it in one batch, and a flagged image is withheld: `screen` puts None in its place, so it is never written, and the
result names its index. The checker's own black-out of flagged images is never used.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPImageProcessor

from .config import EngineConfig
from .errors import EngineError
from .tiny import ensure_tiny_safety_checker

log = logging.getLogger(__name__)

# One image per entry; None where the check withheld it.
Screened = list[Image.Image | None]

# The checker's cosine thresholds that make the tiny profile's checker flag every image (a cosine is ≥ -1) or none
# (a cosine is ≤ 1): still the real class's comparison, with its buffers set.
_TINY_THRESHOLDS = {"all": -2.0, "none": 2.0}


@dataclass(frozen=True)
class SafetyCheck:
    checker: StableDiffusionSafetyChecker
    processor: CLIPImageProcessor
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """Whether the checker flags each image; all of them in one forward pass."""
        if not images:
            return []
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        arrays = [np.asarray(image) for image in images]  # the checker blacks these out in place; never written
        _, flagged = self.checker(clip_input=pixels.to(self.device, self.dtype), images=arrays)
        return [bool(f) for f in flagged]

    def screen(self, images: Sequence[Image.Image]) -> Screened:
        flags = self.flags(images)
        if any(flags):
            log.info("safety check withheld %d of %d images", sum(flags), len(flags))
        return [None if flag else image for image, flag in zip(images, flags)]


def screen(check: SafetyCheck | None, images: Sequence[Image.Image]) -> Screened:
    """The images as they may be written: unchanged without a check, flagged ones None with one."""
    return list(images) if check is None else check.screen(images)


def safety_folder(config: EngineConfig) -> Path | None:
    """The checker's folder to load, or None when the check is off (or auto and nothing is installed)."""
    if config.safety == "off":
        return None
    if config.profile == "tiny":
        return ensure_tiny_safety_checker(config.cache_dir) if config.safety == "on" else None
    folder = config.safety_checker
    installed = folder is not None and (folder / "config.json").is_file()
    if config.safety == "on" and not installed:
        raise EngineError(
            "not_found",
            f"SAFETY_CHECKER=on but no safety checker is installed at {folder}: run the models command "
            "(npm run models -- safety-checker) or set ENGINE_SAFETY_CHECKER",
        )
    return folder if installed else None


def load_safety_check(config: EngineConfig, device: torch.device, dtype: torch.dtype) -> SafetyCheck | None:
    folder = safety_folder(config)
    if folder is None:
        log.info("output safety check off (SAFETY_CHECKER=%s)", config.safety)
        return None
    log.info("loading the safety checker from %s", folder)
    checker = StableDiffusionSafetyChecker.from_pretrained(folder, dtype=dtype, local_files_only=True)
    checker = checker.to(device).requires_grad_(False).eval()
    if config.tiny_safety_flag is not None:
        threshold = _TINY_THRESHOLDS[config.tiny_safety_flag]
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    # Its "a black image will be returned instead" warning would be wrong here: flagged images are withheld.
    logging.getLogger("diffusers.pipelines.stable_diffusion.safety_checker").setLevel(logging.ERROR)
    return SafetyCheck(checker, CLIPImageProcessor.from_pretrained(folder), device, dtype)

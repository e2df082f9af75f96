"""Writing trained weights: the diffusers/peft LoRA file, its kohya twin, and a full UNet; each with our metadata.

Every file is written to a temp name beside its target and renamed into place, so a reader never sees half a file.
The safetensors header carries a "portrait_engine" entry (JSON: base model hash, parameters, steps, losses) next to
whatever the format's own loaders read.

Key spellings come from peft and diffusers' own converters: the diffusers file holds peft's
`get_peft_model_state_dict` keys (diffusers' native LoRA format), read back with `convert_unet_state_dict_to_peft` /
`convert_all_state_dict_to_peft`, and `convert_state_dict_to_kohya` gives kohya's names. Two things that converter
gets wrong for an SD1.x LoRA are corrected here (see `kohya_state_dict`).
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya, convert_unet_state_dict_to_peft
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

METADATA_KEY = "portrait_engine"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
# transformers 5 dropped CLIPTextModel's `text_model.` level; LoRA files (kohya's, ComfyUI's, diffusers' own before
# it) name text-encoder layers with it, and diffusers strips it again on load where the model lacks it.
TEXT_MODEL = "text_model."
_KOHYA_KEY = re.compile(r"(lora_unet|lora_te)_(\w+)\.(lora_down\.weight|lora_up\.weight|alpha)")


def kohya_path(output: Path) -> Path:
    """Where the kohya export of `output` goes: user.safetensors -> user.kohya.safetensors."""
    return output.with_name(output.name.removesuffix(".safetensors") + ".kohya.safetensors")


def lora_layers(unet, text_encoder, adapter: str) -> tuple[dict, dict | None]:
    """The adapter's UNet and text-encoder layers in peft's key spelling (`<module>.lora_A.weight` / `.lora_B.weight`),
    text-encoder layers under `text_model.` whatever the transformers version.

    Not train_dreambooth_lora.py's convert_state_dict_to_diffusers: that renames only the attention projections
    (`.lora.down`), leaving proj_in, proj_out and the feed-forward layers in peft's spelling, and diffusers' loader,
    seeing any peft key, reads the whole file as peft and silently drops every attention layer of such a mix."""
    unet_layers = get_peft_model_state_dict(unet, adapter_name=adapter)
    if text_encoder is None:
        return unet_layers, None
    text_layers = get_peft_model_state_dict(text_encoder, adapter_name=adapter)
    if not hasattr(text_encoder, "text_model"):
        text_layers = {TEXT_MODEL + key: tensor for key, tensor in text_layers.items()}
    return unet_layers, text_layers


def adapter_config(config) -> dict:
    """The LoraConfig fields a LoRA file carries for diffusers: exactly the ones diffusers builds itself when a file
    has none (0.35's get_peft_kwargs), which its loader passes to `LoraConfig(**...)` and reads `rank_pattern` from.
    Not a full peft dump: fields of a newer peft would not construct an older peft's LoraConfig."""
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": dict(config.alpha_pattern),
        "target_modules": sorted(config.target_modules),
        "use_dora": config.use_dora,
        "lora_bias": config.lora_bias,
    }


def write_lora(output: Path, unet, text_encoder, adapter: str, metadata: dict) -> None:
    """The adapter `adapter` of the UNet (and of the text encoder, when it has one) where
    `StableDiffusionPipeline.load_lora_weights(output)` reads it."""
    unet_layers, text_layers = lora_layers(unet, text_encoder, adapter)

    def save(tmp: Path) -> None:
        StableDiffusionPipeline.save_lora_weights(
            tmp.parent,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=text_layers,
            weight_name=tmp.name,
            unet_lora_adapter_metadata=adapter_config(unet.peft_config[adapter]),
            text_encoder_lora_adapter_metadata=(
                adapter_config(text_encoder.peft_config[adapter]) if text_encoder is not None else None
            ),
        )
        _add_metadata(tmp, {METADATA_KEY: json.dumps(metadata)})

    _atomically(output, save)


def kohya_state_dict(lora: dict[str, torch.Tensor], adapter_metadata: dict) -> dict[str, torch.Tensor]:
    """A diffusers-format LoRA (the file `write_lora` writes: `unet.` / `text_encoder.` keys, and its
    lora_adapter_metadata) in kohya's SD1.x format: `lora_unet_<module path with _>` and
    `lora_te_text_model_<...>`, each with `.lora_down.weight`, `.lora_up.weight` and `.alpha`.

    diffusers' convert_state_dict_to_kohya does the spelling; two of its choices are SDXL's or lossy and corrected:
    it names the text encoder `lora_te1_` (SDXL's first encoder; SD1.x LoRAs, sd-scripts and A1111 use `lora_te_`),
    and it writes each module's rank as its alpha (loaders scale by alpha / rank, so alpha != rank would be lost).
    Raises ValueError, before anything is written, on any key it cannot convert completely."""
    unknown = sorted(key for key in lora if not key.startswith(("unet.", "text_encoder.")))
    if unknown:
        raise ValueError(f"unexpected LoRA keys {unknown[:3]}")
    peft = {}
    # Files in diffusers' other spellings (`.lora.down`, `.lora_linear_layer.down`) are read too.
    for component, convert in (("unet", convert_unet_state_dict_to_peft), ("text_encoder", convert_all_state_dict_to_peft)):
        part = {key.removeprefix(f"{component}."): t for key, t in lora.items() if key.startswith(f"{component}.")}
        if not part:
            continue
        if component == "text_encoder":  # files written under transformers 5 before the level was restored
            part = {key if key.startswith(TEXT_MODEL) else TEXT_MODEL + key: t for key, t in part.items()}
        for pattern in ("rank_pattern", "alpha_pattern"):
            if adapter_metadata.get(f"{component}.{pattern}"):
                raise ValueError(f"{component}: a per-module {pattern} is not supported in the kohya export")
        peft |= {f"{component}.{key}": t for key, t in convert(part).items()}
    kohya = {}
    for key, tensor in convert_state_dict_to_kohya(peft).items():
        if key.startswith("lora_te1_"):
            key = "lora_te_" + key.removeprefix("lora_te1_")
        match = _KOHYA_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"LoRA key {key} did not convert to kohya's format")
        if match[3] == "alpha":
            component = "unet" if match[1] == "lora_unet" else "text_encoder"
            tensor = torch.tensor(float(adapter_metadata[f"{component}.lora_alpha"]))
        kohya[key] = tensor
    modules = {key.split(".", 1)[0] for key in kohya}
    parts = ("lora_down.weight", "lora_up.weight", "alpha")
    incomplete = sorted(m for m in modules if not all(f"{m}.{part}" in kohya for part in parts))
    if incomplete or 2 * len(modules) != len(lora):
        raise ValueError(f"LoRA modules {incomplete[:3]} did not convert completely")
    return kohya


def kohya_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of a kohya LoRA as sd-scripts computes them when it saves one
    (train_util.precalculate_safetensors_hashes): the file serialized with only its `ss_` metadata; the model hash is
    sha256 of everything after the header (sd-webui-additional-networks' and A1111's LoRA hash), the legacy one the
    first 8 hex digits of sha256 over 64 KiB at offset 1 MiB."""
    data = safetensors.torch.save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = 8 + int.from_bytes(data[:8], "little")
    model_hash = hashlib.sha256(data[header:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def write_kohya(output: Path, lora_file: Path, metadata: dict, *, prediction_type: str = "epsilon") -> None:
    """The LoRA in `lora_file` (written by `write_lora`) in kohya's format, which A1111, ComfyUI and sd-scripts load,
    with the metadata sd-scripts writes for an SD1.5 LoRA (`ss_*`, `sshs_*`, `modelspec.*`) and ours."""
    tensors = safetensors.torch.load_file(lora_file)
    with safe_open(lora_file, "pt") as file:
        adapter_metadata = json.loads(file.metadata()[ADAPTER_METADATA_KEY])
    kohya = kohya_state_dict(tensors, adapter_metadata)
    params = metadata["params"]
    header = {
        "ss_network_module": "networks.lora",
        # The file's own shape (the kohya tensors' alphas come from it too).
        "ss_network_dim": str(adapter_metadata["unet.r"]),
        "ss_network_alpha": str(float(adapter_metadata["unet.lora_alpha"])),
        # Which layers carry the LoRA (kohya's networks.lora would take every Linear of the attention blocks); values
        # are strings as sd-scripts' --network_args gives them.
        "ss_network_args": json.dumps(
            {
                "unet_target_modules": ",".join(adapter_metadata["unet.target_modules"]),
                "text_encoder_target_modules": ",".join(adapter_metadata.get("text_encoder.target_modules", [])),
            }
        ),
        "ss_v2": "False",
        "ss_base_model_version": "sd_v1",
        "ss_steps": str(metadata["steps"]),
        "ss_max_train_steps": str(params["max_steps"]),
        "ss_learning_rate": str(params["learning_rate"]),
        "ss_unet_lr": str(params["learning_rate"]),
        "ss_text_encoder_lr": str(params["learning_rate"] if params["train_text_encoder"] else None),
        "ss_lr_scheduler": params["lr_scheduler"],
        "ss_lr_warmup_steps": str(params["lr_warmup_steps"]),
        "ss_gradient_accumulation_steps": str(params["grad_accum"]),
        "ss_batch_size_per_device": str(params["batch_size"]),
        "ss_resolution": f"({params['resolution']}, {params['resolution']})",
        "ss_seed": str(params["seed"]),
        "ss_mixed_precision": params["mixed_precision"],
        "ss_prior_loss_weight": str(params["prior_loss_weight"]),
        "ss_min_snr_gamma": str(params["snr_gamma"]),
        "ss_noise_offset": str(params["noise_offset"]),
    }
    model_hash, legacy_hash = kohya_hashes(kohya, header)
    header |= {
        "sshs_model_hash": model_hash,
        "sshs_legacy_hash": legacy_hash,
        # sd-scripts' library/sai_model_spec.py for an SD1.x LoRA.
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": output.name.removesuffix(".safetensors").removesuffix(".kohya"),
        "modelspec.resolution": f"{params['resolution']}x{params['resolution']}",
        "modelspec.date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "modelspec.prediction_type": "v" if prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": params["instance_prompt"],
        METADATA_KEY: json.dumps(metadata),
    }
    _atomically(output, lambda tmp: safetensors.torch.save_file(kohya, tmp, metadata={"format": "pt", **header}))


def write_unet(output: Path, unet, metadata: dict) -> None:
    """A full UNet's weights under UNet2DConditionModel's own state-dict keys (load with `load_state_dict`)."""
    state = {name: tensor.detach().contiguous() for name, tensor in unet.state_dict().items()}
    _atomically(
        output,
        lambda tmp: safetensors.torch.save_file(state, tmp, metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)}),
    )


def read_metadata(path: Path) -> dict:
    """Our metadata entry of a file written here."""
    with safe_open(path, "pt") as file:
        return json.loads(file.metadata()[METADATA_KEY])


def _add_metadata(path: Path, extra: dict[str, str]) -> None:
    with safe_open(path, "pt") as file:
        metadata = file.metadata() or {}
    safetensors.torch.save_file(safetensors.torch.load_file(path), path, metadata={**metadata, **extra})


def _atomically(output: Path, save: Callable[[Path], None]) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        save(tmp / output.name)
        os.replace(tmp / output.name, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

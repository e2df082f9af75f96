"""Writing trained weights: the diffusers/peft LoRA file, its kohya twin, and a full UNet; each with our metadata.

Every file is written to a temp name beside its target and renamed into place, so a reader never sees half a file.
The safetensors header carries a "portrait_engine" entry (JSON: base model hash, parameters, steps, losses) next to
whatever the format's own loaders read.
"""

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open

METADATA_KEY = "portrait_engine"
# diffusers' LoRA keys: UNet layers end in .lora.down/.lora.up, text encoder layers in .lora_linear_layer.down/.up.
_DIFFUSERS_KEY = re.compile(r"(unet|text_encoder)\.(.+?)\.(?:lora|lora_linear_layer)\.(down|up)\.weight")


def kohya_path(output: Path) -> Path:
    """Where the kohya export of `output` goes: user.safetensors -> user.kohya.safetensors."""
    return output.with_name(output.name.removesuffix(".safetensors") + ".kohya.safetensors")


def write_lora(output: Path, unet, text_encoder, adapter: str, metadata: dict) -> None:
    """The adapter `adapter` of the UNet (and of the text encoder, when it has one) where
    `StableDiffusionPipeline.load_lora_weights(output)` reads it."""
    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=adapter))
    text_layers = None
    if text_encoder is not None:
        text_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder, adapter_name=adapter))

    def save(tmp: Path) -> None:
        StableDiffusionPipeline.save_lora_weights(
            tmp.parent,
            unet_lora_layers=unet_layers,
            text_encoder_lora_layers=text_layers,
            weight_name=tmp.name,
            # The adapter's shape travels in the file, so an alpha other than the rank survives loading. Only these
            # fields: a full peft config dump would not load with another peft version.
            unet_lora_adapter_metadata=_adapter_shape(unet.peft_config[adapter]),
            text_encoder_lora_adapter_metadata=(
                _adapter_shape(text_encoder.peft_config[adapter]) if text_encoder is not None else None
            ),
        )
        _add_metadata(tmp, {METADATA_KEY: json.dumps(metadata)})

    _atomically(output, save)


def write_kohya(output: Path, lora_file: Path, metadata: dict) -> None:
    """The LoRA in `lora_file` (diffusers keys) in kohya's format, which A1111, ComfyUI and sd-scripts load:
    `lora_unet_<module path with _>.lora_down/.lora_up.weight` (`lora_te_` for the text encoder) and one `.alpha`
    per module. Kohya's SD1.x LoRA uses diffusers' module names, so only the key spelling changes."""
    tensors = safetensors.torch.load_file(lora_file)
    with safe_open(lora_file, "pt") as file:
        shapes = json.loads(file.metadata()["lora_adapter_metadata"])
    alphas = {prefix: float(shapes[f"{prefix}.lora_alpha"]) for prefix in ("unet", "text_encoder") if
              f"{prefix}.lora_alpha" in shapes}
    kohya = {}
    for key, tensor in tensors.items():
        match = _DIFFUSERS_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected LoRA key {key}")
        component, module, kind = match.groups()
        name = ("lora_unet_" if component == "unet" else "lora_te_") + module.replace(".", "_")
        kohya[f"{name}.lora_{kind}.weight"] = tensor
        # The loaders scale by alpha / rank, rank being lora_down's output size.
        kohya[f"{name}.alpha"] = torch.tensor(alphas[component])
    params = metadata["params"]
    header = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(params["rank"]),
        "ss_network_alpha": str(params["alpha"]),
        "ss_base_model_version": "sd_v1",
        "ss_steps": str(metadata["steps"]),
        "ss_learning_rate": str(params["learning_rate"]),
        "ss_resolution": f"({params['resolution']}, {params['resolution']})",
        "ss_seed": str(params["seed"]),
        "ss_mixed_precision": params["mixed_precision"],
        "ss_network_train_text_encoder_only": "False",
        "ss_network_train_unet_only": str(not params["train_text_encoder"]),
        "sshs_model_hash": metadata["base_model_sha256"],
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


def _adapter_shape(config) -> dict:
    return {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}


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

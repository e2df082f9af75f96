"""The exported LoRA files against their real consumers: diffusers' load_lora_weights (both formats, every target
module the protocol allows, with and without the text encoder), ComfyUI's SD1.5 key map on full-size key names,
diffusers 0.35's reading of the adapter metadata, and sd-scripts' hashes and metadata."""

import hashlib
import itertools
import json
import typing
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from PIL import Image
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from portrait_engine.engine import Engine
from portrait_engine.export import (
    ADAPTER_METADATA_KEY,
    kohya_hashes,
    kohya_path,
    kohya_state_dict,
    read_metadata,
    write_kohya,
    write_lora,
)
from portrait_engine.protocol import TargetModule, TrainParams, TrainRequest
from portrait_engine.tiny import BASE_DIR
from portrait_engine.train import ADAPTER, TEXT_ENCODER_TARGETS

from .support import RecordingJob

FIXTURES = Path(__file__).parent / "fixtures"
TARGETS: tuple[str, ...] = typing.get_args(TargetModule)
DEFAULT_TARGETS = TrainParams().target_modules
# Every module alone (each converts by its own rule), the default set and all of them.
TARGET_SETS = [[target] for target in TARGETS] + [DEFAULT_TARGETS, list(TARGETS)]
# The LoraConfig fields diffusers 0.35 builds when a file has no metadata (src/diffusers/utils/peft_utils.py
# get_peft_kwargs at v0.35.0); with metadata it calls LoraConfig(**metadata) and reads metadata["rank_pattern"].
DIFFUSERS_035_CONFIG_FIELDS = {"r", "lora_alpha", "rank_pattern", "alpha_pattern", "target_modules", "use_dora", "lora_bias"}


@pytest.fixture(scope="module")
def comfyui() -> dict:
    return json.loads((FIXTURES / "comfyui-sd15-lora-keys.json").read_text())


@pytest.fixture(scope="module")
def loader(cache_dir: Path) -> StableDiffusionPipeline:
    """A second pipeline on the tiny base, where the files are loaded the way a user of diffusers would."""
    pipe = StableDiffusionPipeline.from_pretrained(cache_dir / BASE_DIR, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def small_photo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("photo") / "p.png"
    Image.new("RGB", (64, 64), "peachpuff").save(path)
    return str(path)


def _deltas(*models) -> dict[str, torch.Tensor]:
    """Each LoRA layer's weight update (scaling included), by module name: what the adapter adds to the model."""
    deltas = {}
    for prefix, model in zip(("unet", "text_encoder"), models):
        if model is None:
            continue
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer) and module.active_adapters:
                deltas[f"{prefix}.{name}"] = module.get_delta_weight(module.active_adapters[0]).detach().clone()
    return deltas


@torch.no_grad()
def _forward(unet, text_encoder) -> torch.Tensor:
    """The UNet's prediction on fixed inputs, conditioned through the text encoder: every adapted layer takes part."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, 8, 8), generator=generator)
    tokens = torch.randint(0, 1000, (1, 77), generator=generator)
    return unet(latents, torch.tensor([500]), text_encoder(tokens)[0]).sample


def _loaded(pipe: StableDiffusionPipeline, path: Path) -> tuple[dict, torch.Tensor]:
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(path))
    try:
        return _deltas(pipe.unet, pipe.text_encoder), _forward(pipe.unet, pipe.text_encoder)
    finally:
        pipe.unload_lora_weights()


@pytest.mark.parametrize("text_encoder", [False, True], ids=["unet", "unet+te"])
@pytest.mark.parametrize("targets", TARGET_SETS, ids=["+".join(t) for t in TARGET_SETS])
def test_both_files_load_into_diffusers_as_the_trained_model(
    engine: Engine, loader, small_photo, tmp_path, targets, text_encoder
):
    reference = {}

    def capture(training) -> None:  # the trained model while its adapters are live
        encoder = engine.models.pipe.text_encoder
        reference["deltas"] = _deltas(training.unet, training.text_encoder)
        reference["output"] = _forward(training.unet, encoder)

    output = tmp_path / "user.safetensors"
    params = TrainParams(resolution=64, max_steps=1, grad_accum=1, learning_rate=1e-2, rank=4, alpha=8.0,
                         target_modules=targets, train_text_encoder=text_encoder)
    result = engine.train(TrainRequest(id="t", op="train", photos=[small_photo], output=str(output), params=params),
                          RecordingJob(), observer=capture)
    kohya = Path(result.kohya_output)
    assert kohya == kohya_path(output)

    layers = reference["deltas"]
    assert {name.rsplit(".", 1)[-1] for name in layers} >= {t.rsplit(".", 1)[-1] for t in targets}
    assert any(name.startswith("text_encoder.") for name in layers) == text_encoder
    assert all(delta.abs().max() > 0 for delta in layers.values()), "one step moved every adapter"
    for path in (output, kohya):  # bit for bit: same tensors, same alpha / rank scaling
        deltas, prediction = _loaded(loader, path)
        assert deltas.keys() == layers.keys(), path.name
        assert all(torch.equal(delta, layers[name]) for name, delta in deltas.items()), path.name
        assert torch.equal(prediction, reference["output"]), path.name

    names = safetensors.torch.load_file(kohya).keys()
    if text_encoder:  # kohya's, ComfyUI's and A1111's spelling, with the level transformers 5 dropped
        encoder = [k for k in names if k.startswith("lora_te_")]
        assert encoder and all(k.startswith("lora_te_text_model_encoder_layers_") for k in encoder)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_")) for k in names)


def test_kohya_conversion_reads_every_diffusers_spelling_and_fails_before_writing(tmp_path):
    proj_in, to_q = "down_blocks.1.attentions.0.proj_in", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    q_proj = "encoder.layers.0.self_attn.q_proj"  # transformers 5's name, without text_model.
    lora = {f"unet.{proj_in}.lora_A.weight": torch.zeros(4, 8, 1, 1), f"unet.{proj_in}.lora_B.weight": torch.zeros(8, 4, 1, 1),
            f"unet.{to_q}.lora.down.weight": torch.zeros(4, 8), f"unet.{to_q}.lora.up.weight": torch.zeros(8, 4),
            f"text_encoder.{q_proj}.lora_linear_layer.down.weight": torch.zeros(4, 8),
            f"text_encoder.{q_proj}.lora_linear_layer.up.weight": torch.zeros(8, 4)}
    metadata = {"unet.lora_alpha": 4, "text_encoder.lora_alpha": 2}
    kohya = kohya_state_dict(lora, metadata)
    modules = {"lora_unet_" + proj_in.replace(".", "_"): 4.0, "lora_unet_" + to_q.replace(".", "_"): 4.0,
               "lora_te_text_model_" + q_proj.replace(".", "_"): 2.0}
    assert set(kohya) == {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert all(kohya[f"{m}.alpha"].item() == alpha for m, alpha in modules.items())

    source = tmp_path / "odd.safetensors"
    odd = lora | {f"unet.{proj_in}.lora_magnitude_vector": torch.ones(8)}  # a DoRA layer: no kohya LoRA equivalent
    safetensors.torch.save_file(odd, source, metadata={ADAPTER_METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(ValueError, match="did not convert"):
        write_kohya(tmp_path / "odd.kohya.safetensors", source, {"params": {}})
    foreign = tmp_path / "foreign.safetensors"
    safetensors.torch.save_file(lora | {"vae.x.lora_A.weight": torch.zeros(1)}, foreign,
                                metadata={ADAPTER_METADATA_KEY: json.dumps(metadata)})
    with pytest.raises(ValueError, match="unexpected LoRA keys"):
        write_kohya(tmp_path / "foreign.kohya.safetensors", foreign, {"params": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.safetensors", "odd.safetensors"]


# --- full-size SD1.5 key names ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_size_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A LoRA on every allowed module of SD1.5-size models (built on the meta device; only the adapters are real),
    written through the engine's own export with the text encoder."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults are SD1.x's architecture
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, projection_dim=768))
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8.0, target_modules=list(TARGETS)), adapter_name=ADAPTER)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8.0, target_modules=TEXT_ENCODER_TARGETS), text_encoder, ADAPTER)
    generator = torch.Generator().manual_seed(0)
    for model in (unet, text_encoder):
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for layer in (module.lora_A[ADAPTER], module.lora_B[ADAPTER]):
                    layer.to_empty(device="cpu")
                    layer.weight.data = torch.randn(layer.weight.shape, generator=generator)
    folder = tmp_path_factory.mktemp("full")
    metadata = {"base_model_sha256": "0" * 64, "steps": 1,
                "params": TrainParams(rank=4, alpha=8.0, target_modules=list(TARGETS), train_text_encoder=True, learning_rate=1e-4,
                                      mixed_precision="no").model_dump(mode="json")}
    lora = folder / "full.safetensors"
    write_lora(lora, unet, text_encoder, ADAPTER, metadata)
    write_kohya(kohya_path(lora), lora, metadata)
    return lora, kohya_path(lora)


def _modules(keys) -> dict[str, set[str]]:
    """kohya keys by module: {module: {"lora_down.weight", "lora_up.weight", "alpha"}}"""
    modules: dict[str, set[str]] = {}
    for key in keys:
        module, part = key.split(".", 1)
        modules.setdefault(module, set()).add(part)
    return modules


def test_every_full_size_kohya_key_is_one_comfyui_loads(full_size_export, comfyui):
    # ComfyUI's load_lora takes <module>.lora_up.weight, .lora_down.weight and .alpha for each module its map knows;
    # any other key is reported "lora key not loaded" and skipped.
    _, kohya = full_size_export
    modules = _modules(safetensors.torch.load_file(kohya).keys())
    assert all(parts == {"lora_down.weight", "lora_up.weight", "alpha"} for parts in modules.values())
    unknown = sorted(set(modules) - comfyui["kohya"].keys())
    assert not unknown, unknown[:5]
    unet = [m for m in modules if m.startswith("lora_unet_")]
    encoder = [m for m in modules if m.startswith("lora_te_")]
    # SD1.5: 16 transformer blocks x (8 attention projections + 2 feed-forward) + 16 x (proj_in, proj_out); CLIP-L:
    # 12 layers x 4 attention projections. Each module is a distinct weight of ComfyUI's model.
    assert (len(unet), len(encoder)) == (16 * 10 + 16 * 2, 12 * 4)
    assert len({comfyui["kohya"][m] for m in modules}) == len(modules)


def test_every_target_module_set_converts_completely_to_comfyui_keys(full_size_export, comfyui):
    # Conversion is per key, so each of the 255 subsets of the allowed modules is the full export filtered to it;
    # kohya_state_dict is run on each (as write_kohya would) and must give exactly that subset, all known to ComfyUI.
    lora, _ = full_size_export
    tensors = safetensors.torch.load_file(lora)
    with safe_open(lora, "pt") as file:
        metadata = json.loads(file.metadata()[ADAPTER_METADATA_KEY])
    encoder = {k: v for k, v in tensors.items() if k.startswith("text_encoder.")}

    def targets_of(key: str) -> str:
        module = key.removeprefix("unet.").split(".lora")[0]
        return next(t for t in TARGETS if module.endswith("." + t))

    for count in range(1, len(TARGETS) + 1):
        for subset in itertools.combinations(TARGETS, count):
            unet = {k: v for k, v in tensors.items() if k.startswith("unet.") and targets_of(k) in subset}
            for lora_part in (unet, unet | encoder):
                modules = _modules(kohya_state_dict(lora_part, metadata))
                assert 2 * len(modules) == len(lora_part) and modules.keys() <= comfyui["kohya"].keys(), subset


def test_the_diffusers_file_names_text_encoder_layers_as_comfyui_and_older_diffusers_do(full_size_export, comfyui):
    lora, _ = full_size_export
    modules = {k.split(".lora_")[0] for k in safetensors.torch.load_file(lora).keys()}
    encoder = {m for m in modules if m.startswith("text_encoder.")}
    assert len(encoder) == 48 and encoder <= set(comfyui["diffusers"])
    # What the README says: ComfyUI's diffusers names for attention are the old `processor.to_q`, so of this file's
    # UNet layers it reads only proj_in/proj_out and the feed-forward ones; ComfyUI users get the kohya file.
    unet = modules - encoder
    assert {m for m in unet if m in comfyui["diffusers"]} == {m for m in unet if ".attn" not in m} != unet


# --- metadata ---------------------------------------------------------------------------------------------------


def test_the_diffusers_file_carries_the_lora_config_diffusers_035_builds(full_size_export):
    lora, _ = full_size_export
    with safe_open(lora, "pt") as file:
        packed = json.loads(file.metadata()[ADAPTER_METADATA_KEY])
    for component, targets in (("unet", sorted(TARGETS)), ("text_encoder", sorted(TEXT_ENCODER_TARGETS))):
        # What diffusers 0.35's loader does with it: strip the component's prefix, LoraConfig(**config).
        config = {k.removeprefix(f"{component}."): v for k, v in packed.items() if k.startswith(f"{component}.")}
        assert config.keys() == DIFFUSERS_035_CONFIG_FIELDS
        assert config["rank_pattern"] == {} and config["alpha_pattern"] == {} and config["target_modules"] == targets
        built = LoraConfig(**config)
        assert (built.r, built.lora_alpha, built.use_dora) == (4, 8.0, False)


def _hash_fixture() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A kohya-named LoRA over 1 MiB (so the legacy hash reads real bytes), with values from a formula (exact on any
    machine), and metadata of which only the ss_ keys count."""
    shapes = {"lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_down.weight": (32, 1280),
              "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.lora_up.weight": (10240, 32)}
    tensors = {}
    for i, (name, shape) in enumerate(shapes.items()):
        count = shape[0] * shape[1]
        values = (torch.arange(count, dtype=torch.float64) * (i + 3) % 997) / 997 - 0.5
        tensors[name] = values.to(torch.float32).reshape(shape)
    tensors["lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha"] = torch.tensor(16.0)
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": "32", "ss_network_alpha": "16.0",
                "ss_base_model_version": "sd_v1", "modelspec.title": "not hashed"}
    return tensors, metadata


# sd-scripts' own library/train_util.py precalculate_safetensors_hashes (kohya-ss/sd-scripts at 48d368fa, run from a
# checkout outside this repository) on _hash_fixture().
SD_SCRIPTS_HASHES = ("6f5878561c67b0ec5cfd55327b97c5ca0e19846c43874a9ee4aee65111844f3f", "544ade78")


def test_kohya_hashes_are_sd_scripts_own(full_size_export):
    assert kohya_hashes(*_hash_fixture()) == SD_SCRIPTS_HASHES

    # The written file's: the model hash is what A1111 computes from the file as saved (sha256 after the header).
    _, kohya = full_size_export
    with safe_open(kohya, "pt") as file:
        header = file.metadata()
    data = kohya.read_bytes()
    assert header["sshs_model_hash"] == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    assert (header["sshs_model_hash"], header["sshs_legacy_hash"]) == kohya_hashes(
        safetensors.torch.load_file(kohya), header
    )
    assert read_metadata(kohya)["base_model_sha256"] == "0" * 64 != header["sshs_model_hash"]


def test_kohya_metadata_is_what_sd_scripts_writes_for_an_sd15_lora(full_size_export):
    _, kohya = full_size_export
    with safe_open(kohya, "pt") as file:
        header = file.metadata()
    assert {k: header[k] for k in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_v2",
                                   "ss_base_model_version")} == {
        "ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "8.0", "ss_v2": "False",
        "ss_base_model_version": "sd_v1"}
    assert json.loads(header["ss_network_args"]) == {
        "unet_target_modules": ",".join(sorted(TARGETS)),
        "text_encoder_target_modules": ",".join(sorted(TEXT_ENCODER_TARGETS))}
    assert header["ss_text_encoder_lr"] == header["ss_unet_lr"] == "0.0001"
    spec = {k: v for k, v in header.items() if k.startswith("modelspec.")}
    assert spec | {"modelspec.date": None} == {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": "full",
        "modelspec.resolution": "512x512",
        "modelspec.date": None,
        "modelspec.prediction_type": "epsilon",
        "modelspec.trigger_phrase": "a photo of sks person",
    }
    assert spec["modelspec.date"].startswith("20") and spec["modelspec.date"].endswith("+00:00")

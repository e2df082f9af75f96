import json
import subprocess
import sys
from pathlib import Path

from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from portrait_engine.tiny import BASE_DIR, CONTROLNET_DIR

from .support import ENGINE_DIR


def test_tiny_models_have_sd15_structure(engine, cache_dir: Path):
    base = cache_dir / BASE_DIR
    index = json.loads((base / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    vae = AutoencoderKL.from_pretrained(base / "vae")
    assert len(vae.config.down_block_types) == 4 and vae.config.latent_channels == 4
    assert vae.config.scaling_factor == 0.18215
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    text = CLIPTextModel.from_pretrained(base / "text_encoder")
    assert unet.config.cross_attention_dim == text.config.hidden_size
    assert text.config.vocab_size == 49408 and text.config.max_position_embeddings == 77
    controlnet = ControlNetModel.from_pretrained(cache_dir / CONTROLNET_DIR)
    assert controlnet.config.block_out_channels == unet.config.block_out_channels
    scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (0.00085, 0.012)
    assert (scheduler["beta_schedule"], scheduler["num_train_timesteps"]) == ("scaled_linear", 1000)
    assert (scheduler["prediction_type"], scheduler["clip_sample"]) == ("epsilon", False)


def test_tokenizer_is_byte_level_clip(engine, cache_dir: Path):
    tokenizer = CLIPTokenizer.from_pretrained(cache_dir / BASE_DIR / "tokenizer")
    vocab = tokenizer.get_vocab()
    ids = tokenizer("Sks é", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    # Lower-cased, one token per byte, </w> on each word's last byte; é is two bytes (Ã, ©).
    expected = ["s", "k", "s</w>", "Ã", "©</w>"]
    assert ids[: len(expected) + 2] == [49406, *(vocab[token] for token in expected), 49407]
    assert len(ids) == 77 and set(ids[len(expected) + 2 :]) == {49407}


def test_generation_is_deterministic_and_safe_when_processes_race(engine, cache_dir: Path, tmp_path: Path):
    build = f"import pathlib, portrait_engine.tiny as t; t.ensure_tiny_models(pathlib.Path({str(tmp_path)!r}))"
    racers = [subprocess.Popen([sys.executable, "-c", build], cwd=ENGINE_DIR) for _ in range(2)]
    assert [racer.wait(timeout=120) for racer in racers] == [0, 0]
    assert sorted(path.name for path in tmp_path.iterdir()) == [CONTROLNET_DIR, BASE_DIR]  # no temp dirs left
    for weights in [
        f"{BASE_DIR}/unet/diffusion_pytorch_model.safetensors",
        f"{BASE_DIR}/text_encoder/model.safetensors",
        f"{CONTROLNET_DIR}/diffusion_pytorch_model.safetensors",
    ]:
        assert (tmp_path / weights).read_bytes() == (cache_dir / weights).read_bytes()

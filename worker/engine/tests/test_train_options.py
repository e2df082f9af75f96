"""Training options beyond the defaults: checkpoints and resume, kohya export and metadata, full-UNet mode, prior
preservation, text-encoder LoRA, min-SNR, noise offset, epochs, 8-bit Adam fallback, the reference's randomness."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from pydantic import ValidationError
from safetensors import safe_open

from portrait_engine.engine import Engine
from portrait_engine.errors import Cancelled, EngineError
from portrait_engine.export import read_metadata
from portrait_engine.protocol import GenerateRequest, TrainParams, TrainRequest
from portrait_engine.tiny import BASE_DIR
from portrait_engine.train import ReferenceRandom, resolve_params

from .support import QUICK_TRAIN, RecordingJob

SMALL = dict(resolution=64, seed=5)


def _request(photos, output: Path, class_photos=None, checkpoint_dir=None, **params) -> TrainRequest:
    return TrainRequest(
        id="t",
        op="train",
        photos=photos,
        output=str(output),
        class_photos=class_photos,
        checkpoint_dir=checkpoint_dir,
        params=TrainParams(**params),
    )


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = safetensors.torch.load_file(a), safetensors.torch.load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_killed_job_resumes_from_its_last_checkpoint_with_the_uninterrupted_result(engine: Engine, photos, tmp_path):
    params = dict(**SMALL, max_steps=5, checkpoint_steps=2, learning_rate=1e-2, lr_scheduler="cosine", lr_warmup_steps=1)
    whole = engine.train(_request(photos, tmp_path / "whole.safetensors", **params), RecordingJob())

    output = tmp_path / "resumed.safetensors"
    checkpoints = tmp_path / "resumed.checkpoints"
    with pytest.raises(Cancelled):  # killed during step 4: checkpoint-2 is the last one written
        engine.train(_request(photos, output, **params), RecordingJob(cancel_at=3))
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-2"]
    assert (checkpoints / "checkpoint-2" / "lora.safetensors").is_file()  # a loadable snapshot
    job = RecordingJob()
    resumed = engine.train(_request(photos, output, **params), job)

    assert resumed.resumed_from == 2 and [step for step, _, _ in job.steps] == [3, 4, 5]
    assert resumed.losses == whole.losses
    assert _same_tensors(output, tmp_path / "whole.safetensors")
    assert not checkpoints.exists()  # removed once the output is written


def test_a_checkpoint_of_another_job_is_not_resumed(engine: Engine, photos, tmp_path):
    folder = tmp_path / "checkpoints"
    with pytest.raises(Cancelled):
        engine.train(
            _request(photos, tmp_path / "a.safetensors", checkpoint_dir=str(folder), **SMALL, max_steps=4,
                     checkpoint_steps=1),
            RecordingJob(cancel_at=2),
        )
    other = engine.train(
        _request(photos, tmp_path / "b.safetensors", checkpoint_dir=str(folder), resolution=64, seed=6, max_steps=2,
                 checkpoint_steps=1),
        RecordingJob(),
    )
    assert other.resumed_from is None and other.steps == 2


def test_kohya_export_loads_like_the_diffusers_file_and_both_carry_metadata(trained_lora: Path, cache_dir: Path):
    kohya = trained_lora.with_name("user.kohya.safetensors")
    tensors = safetensors.torch.load_file(kohya)
    down = [k for k in tensors if k.endswith(".lora_down.weight")]
    assert down and all(re.fullmatch(r"lora_unet_\w+\.(lora_down\.weight|lora_up\.weight|alpha)", k) for k in tensors)
    assert all(tensors[k.replace(".lora_down.weight", ".alpha")].item() == QUICK_TRAIN["alpha"] for k in down)
    with safe_open(kohya, "pt") as file:
        header = file.metadata()
    assert header["ss_network_dim"] == "4" and header["ss_network_alpha"] == "8.0"

    for path in (trained_lora, kohya):
        metadata = read_metadata(path)
        assert len(metadata["base_model_sha256"]) == 64 and metadata["steps"] == QUICK_TRAIN["max_steps"]
        assert metadata["params"]["rank"] == 4 and metadata["final_loss"] == metadata["losses"][-1]

    pipe = StableDiffusionPipeline.from_pretrained(cache_dir / BASE_DIR, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def sample(lora: Path) -> np.ndarray:
        pipe.unload_lora_weights()
        pipe.load_lora_weights(str(lora))
        return pipe("a photo of sks person", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    # diffusers reads kohya files the way A1111 does (scale alpha / rank from the file's alphas).
    assert np.abs(sample(kohya) - sample(trained_lora)).max() < 1e-5


def test_full_mode_trains_a_float32_unet_and_leaves_the_shared_one_alone(engine: Engine, photos, tmp_path, cache_dir):
    shared = {k: v.clone() for k, v in engine.models.pipe.unet.state_dict().items()}
    output = tmp_path / "unet.safetensors"
    result = engine.train(_request(photos, output, mode="full", max_steps=2, **SMALL), RecordingJob())
    assert result.params.learning_rate == 5e-6 and result.kohya_output is None
    assert all(torch.equal(v, engine.models.pipe.unet.state_dict()[k]) for k, v in shared.items())

    trained = safetensors.torch.load_file(output)
    assert trained.keys() == shared.keys() and all(t.dtype == torch.float32 for t in trained.values())
    moved = sum(not torch.equal(trained[k], shared[k]) for k in shared)
    assert moved > 0.9 * len(shared)  # every weight takes gradients, not just an adapter
    unet = UNet2DConditionModel.from_pretrained(cache_dir / BASE_DIR, subfolder="unet")
    unet.load_state_dict(trained)  # strict: exactly the UNet's own keys
    assert read_metadata(output)["mode"] == "full"


def test_prior_preservation_text_encoder_lora_min_snr_and_offset_noise(engine: Engine, photos, tmp_path):
    base = dict(**SMALL, max_steps=2, grad_accum=1)
    plain = engine.train(_request(photos[:2], tmp_path / "plain.safetensors", **base), RecordingJob())
    prior = engine.train(
        _request(photos[:2], tmp_path / "prior.safetensors", class_photos=[photos[2]], prior_loss_weight=1.0, **base),
        RecordingJob(),
    )
    # Same random draws would be consumed differently; what must hold is that the class term is added to the loss.
    assert prior.losses != plain.losses and all(np.isfinite(prior.losses))

    text = engine.train(
        _request(photos, tmp_path / "text.safetensors", train_text_encoder=True, **base), RecordingJob()
    )
    keys = safetensors.torch.load_file(text.output).keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
    assert any(k.startswith("lora_te_") for k in safetensors.torch.load_file(text.kohya_output))
    assert not any("lora" in name for name, _ in engine.models.pipe.text_encoder.named_modules())
    # Both parts load back for generation (transformers ≤ 5.23 accepts the pinned peft 0.21).
    def generate(lora: str | None) -> np.ndarray:
        request = GenerateRequest(id=f"g{lora}", op="generate", prompt="a photo of sks person", lora=lora, steps=2,
                                  width=64, height=64, seed=3, output_dir=str(tmp_path / f"out-{lora is None}"))
        return np.asarray(Image.open(engine.generate(request, RecordingJob()).images[0]), dtype=np.int16)

    assert np.abs(generate(text.output) - generate(None)).max() > 0
    assert any("lora" in name for name, _ in engine.models.pipe.text_encoder.named_modules()), "text-encoder part loaded"

    weighted = engine.train(
        _request(photos, tmp_path / "snr.safetensors", snr_gamma=5.0, noise_offset=0.1, **base), RecordingJob()
    )
    assert all(np.isfinite(weighted.losses)) and weighted.losses != plain.losses


def test_epochs_count_optimizer_steps_and_exclude_max_steps(engine: Engine, photos, tmp_path):
    # 3 photos, batch 1, accumulation 2: two optimizer steps per epoch (the second one shorter).
    result = engine.train(_request(photos, tmp_path / "e.safetensors", epochs=2, **SMALL), RecordingJob())
    assert result.steps == 4 and result.params.max_steps == 4
    with pytest.raises(ValidationError, match="max_steps or epochs"):
        _request(photos, tmp_path / "e.safetensors", epochs=2, max_steps=3)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_trains_with_adamw_and_says_so(engine: Engine, photos, tmp_path):
    result = engine.train(_request(photos, tmp_path / "a.safetensors", use_8bit_adam=True, max_steps=1, **SMALL),
                          RecordingJob())
    assert result.warnings and "bitsandbytes" in result.warnings[0]
    assert json.loads(result.model_dump_json())["warnings"] == result.warnings


def test_nothing_is_trained_below_the_resolution(engine: Engine, photos, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200), "white").save(small)
    with pytest.raises(EngineError, match="smaller than the resolution 256"):
        engine.train(_request([photos[0], str(small)], tmp_path / "a.safetensors", resolution=256), RecordingJob())
    with pytest.raises(EngineError, match="below 512"):
        resolve_params(TrainParams(resolution=256), torch.float16, "real", 3)
    assert resolve_params(TrainParams(), torch.float16, "real", 3).resolution == 512


def test_reference_random_draws_the_dataloader_order_the_scripts_see():
    # What train_dreambooth_lora.py's shuffled DataLoader yields after set_seed(seed) and the LoRA's init draws.
    seed, length = 42, 7
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.randn(10)  # stands for the adapter initialization
        state = torch.get_rng_state()
        loader = torch.utils.data.DataLoader(list(range(length)), batch_size=1, shuffle=True)
        expected = [[int(b) for batch in loader for b in batch] for _ in range(2)]
        after = torch.randn(3)
    random = ReferenceRandom(seed, torch.device("cpu"), state)
    assert [random.epoch_order(length) for _ in range(2)] == expected
    assert torch.equal(random.normal((3,), torch.float32), after)  # then the same stream for latents and noise

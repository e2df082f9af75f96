"""The fast path on the CPU: selection by config, fallbacks, batch buckets, and that the code the CUDA graphs capture
(same buffers, same step body, same LoRA slots, run eagerly here) computes exactly what diffusers' pipelines do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from portrait_engine import fast_train
from portrait_engine.config import EngineConfig, parse_config
from portrait_engine.engine import Engine
from portrait_engine.fast import FastGenerator, FastSettings, Unsupported, bucket, settings_from_env
from portrait_engine.generate import _derive, generate
from portrait_engine.protocol import GenerateRequest, TrainParams, TrainRequest

from .support import ENGINE_DIR, QUICK_TRAIN, RecordingJob

SIZE = 64


@pytest.fixture(scope="module")
def fast(engine: Engine) -> FastGenerator:
    generator = FastGenerator(engine.models, FastSettings(batch_sizes=(1, 2, 4), width=SIZE, height=SIZE))
    generator.warm_up()
    yield generator
    generator.slots.remove()  # the session's engine goes on without these hooks


@pytest.fixture(scope="module")
def other_lora(engine: Engine, photos: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second user: other photos order, other seed, so its LoRA differs from trained_lora."""
    output = tmp_path_factory.mktemp("other") / "other.safetensors"
    params = TrainParams(**{**QUICK_TRAIN, "seed": 5})
    engine.train(TrainRequest(id="other", op="train", photos=photos[::-1], output=str(output), params=params),
                 RecordingJob())
    return output


def request(**fields) -> GenerateRequest:
    defaults = dict(prompt="a photo of sks person", steps=3, width=SIZE, height=SIZE, seed=11, output_dir="/tmp/x")
    return GenerateRequest(id="g", op="generate", **{**defaults, **fields})


def pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.int16) for image in images])


def run(engine: Engine, req: GenerateRequest, fast: FastGenerator | None, control: Image.Image | None = None):
    return pixels(generate(engine.models, engine.loras, req, req.seed, control, lambda step, total: None, fast))


# --- selection -------------------------------------------------------------------------------------------------


def test_engine_fast_selects_the_path_and_auto_means_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    base = dict(profile="tiny", cache_dir=Path("/c"))
    assert not EngineConfig(**base, device=cpu).use_fast  # auto without CUDA: the plain path
    assert EngineConfig(**base, device=cuda).use_fast
    assert not EngineConfig(**base, device=cuda, fast="off").use_fast
    assert EngineConfig(**base, device=cpu, fast="on").use_fast
    assert parse_config([], {"ENGINE_FAST": "off"}).fast == "off"
    assert parse_config(["--fast", "on"], {"ENGINE_FAST": "off"}).fast == "on"


def test_bad_engine_fast_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_config([], {"ENGINE_FAST": "fast"})
    assert exit.value.code == 2 and "ENGINE_FAST" in capsys.readouterr().err


def test_settings_from_the_environment():
    default = settings_from_env({})
    assert (default.batch_sizes, default.compile_batches, default.width, default.height) == ((1, 2, 4, 8), (1,), 512, 512)
    custom = settings_from_env({"ENGINE_FAST_BATCHES": "8,2", "ENGINE_FAST_COMPILE": "none", "ENGINE_FAST_SIZE": "768x512",
                                "ENGINE_FAST_MAX_RANK": "64"})
    assert (custom.batch_sizes, custom.compile_batches, custom.width, custom.height, custom.max_rank) == \
        ((2, 8), (), 768, 512, 64)


def test_without_cuda_the_engine_runs_the_plain_path(engine: Engine):
    assert engine.config.device.type == "cpu" and engine.fast is None and engine.warmup is None
    assert fast_train.refusal(TrainParams(), torch.device("cpu"), False) == "no CUDA"


def test_graphed_training_refuses_what_it_does_not_compute():
    cuda = torch.device("cuda")
    assert fast_train.refusal(TrainParams(), cuda, False) is None
    assert fast_train.refusal(TrainParams(mode="full"), cuda, False) == "full-UNet mode"
    assert fast_train.refusal(TrainParams(train_text_encoder=True), cuda, False) == "text-encoder training"
    assert fast_train.refusal(TrainParams(), cuda, True) == "prior preservation"
    assert fast_train.refusal(TrainParams(snr_gamma=5.0), cuda, False) == "min-SNR weighting"
    assert fast_train.refusal(TrainParams(checkpoint_steps=10), cuda, False) == "checkpoints"


def test_batch_buckets():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, None]
    assert bucket(3, (2, 6)) == 6 and bucket(1, ()) is None


# --- equivalence with diffusers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["unipc", "euler_a", "dpmpp_2m_karras", "ddim"])
def test_fast_path_equals_the_pipeline(engine: Engine, fast: FastGenerator, trained_lora: Path, scheduler):
    req = request(scheduler=scheduler, lora=str(trained_lora), num_images=3)  # 3 images in the batch-4 buffers
    assert fast.refusal(req, controlnet=False) is None
    ours, theirs = run(engine, req, fast), run(engine, req, None)
    assert np.array_equal(ours, theirs)
    assert not np.array_equal(ours, run(engine, request(scheduler=scheduler, num_images=3), fast))  # LoRA acts


def test_fast_controlnet_equals_the_pipeline(engine: Engine, fast: FastGenerator, trained_lora: Path, photos):
    control = Image.open(photos[0]).convert("RGB").resize((SIZE, SIZE))
    req = request(lora=str(trained_lora), controlnet_scale=0.5, negative_prompt="blurry", guidance_scale=5.0)
    ours, theirs = run(engine, req, fast, control), run(engine, req, None, control)
    assert np.array_equal(ours, theirs)


def test_lora_scale_folds_into_the_slot(engine: Engine, fast: FastGenerator, trained_lora: Path):
    req = request(lora=str(trained_lora), lora_scale=0.4)
    assert np.array_equal(run(engine, req, fast), run(engine, req, None))


# --- LoRA slots ------------------------------------------------------------------------------------------------


def test_switching_users_is_a_copy_and_keeps_outputs_equal(engine, fast, trained_lora, other_lora):
    a, b = request(lora=str(trained_lora)), request(lora=str(other_lora))
    first_a = run(engine, a, fast)
    only_b = run(engine, b, fast)
    assert not np.array_equal(first_a, only_b)
    assert np.array_equal(run(engine, a, fast), first_a)  # back to a: the slot holds exactly a again
    assert np.array_equal(only_b, run(engine, b, None))
    packed, _ = fast.slots.pack(str(trained_lora))
    assert fast.slots.pack(str(trained_lora))[0] is packed  # packed once, switched by copying


def test_one_batch_of_several_users_equals_each_alone(engine, fast, trained_lora, other_lora):
    items = [(request(lora=str(trained_lora), prompt="one"), 3), (request(prompt="two"), 4),
             (request(lora=str(other_lora), prompt="three", guidance_scale=4.0), 5)]
    pipe = _derive(engine.models, "unipc", controlnet=False)
    together = fast.generate_many(items, None, lambda step, total: None, pipe)
    for (req, seed), images in zip(items, together):
        alone = run(engine, req.model_copy(update={"seed": seed}), None)
        # Batched kernels round differently from batch-1 ones: at most one level of 255.
        assert np.abs(pixels(images) - alone).max() <= 1


def test_requests_the_graphs_cannot_serve_take_the_plain_path(engine, fast, trained_lora, tmp_path):
    assert "not captured" in fast.refusal(request(width=96), controlnet=False)
    assert "CFG" in fast.refusal(request(guidance_scale=1.0), controlnet=False)
    state = safetensors.torch.load_file(trained_lora)
    big = {k: torch.cat([v] * 10, dim=0 if "down" in k else 1) for k, v in state.items()}  # rank 40 > 32
    safetensors.torch.save_file(big, tmp_path / "big.safetensors",
                                metadata={"lora_adapter_metadata": json.dumps({"unet.r": 40, "unet.lora_alpha": 40})})
    assert "rank 40" in fast.refusal(request(lora=str(tmp_path / "big.safetensors")), controlnet=False)
    text = {**state, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight":
            torch.zeros(4, 32)}
    safetensors.torch.save_file(text, tmp_path / "text.safetensors")
    with pytest.raises(Unsupported, match="text encoder"):
        fast.slots.pack(str(tmp_path / "text.safetensors"))
    # A refused request still gets its images, from diffusers.
    req = request(width=96, lora=str(trained_lora))
    assert np.array_equal(run(engine, req, fast), run(engine, req, None))


def test_ready_event_reports_the_warm_up(cache_dir: Path, tmp_path: Path):
    env = {**os.environ, "ENGINE_CACHE_DIR": str(cache_dir), "ENGINE_DEVICE": "cpu", "ENGINE_FAST": "on",
           "ENGINE_FAST_SIZE": "64x64", "ENGINE_FAST_BATCHES": "1"}
    done = subprocess.run([sys.executable, "-m", "portrait_engine", "--profile", "tiny"], cwd=ENGINE_DIR, env=env,
                          input=b"", capture_output=True, timeout=120)
    ready = json.loads(done.stdout.splitlines()[0])
    assert ready["event"] == "ready" and ready["info"]["fast"] is True
    assert ready["info"]["batch_sizes"] == [1] and ready["info"]["size"] == [64, 64] and ready["info"]["warmup_s"] >= 0

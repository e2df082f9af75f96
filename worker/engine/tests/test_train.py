from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from portrait_engine.engine import Engine
from portrait_engine.errors import Cancelled, EngineError
from portrait_engine.images import load_photos, photo_tensor
from portrait_engine.protocol import TrainParams, TrainRequest
from portrait_engine.tiny import BASE_DIR
from portrait_engine.train import resolve_mixed_precision, resolve_params, training_session

from .support import QUICK_TRAIN, RecordingJob


def _request(photos: list[str], output: Path, **params) -> TrainRequest:
    return TrainRequest(id="t", op="train", photos=photos, output=str(output), params=TrainParams(**params))


def _assert_unet_is_base(engine: Engine, base_state: dict[str, torch.Tensor]) -> None:
    unet = engine.models.pipe.unet
    assert not any(isinstance(module, BaseTunerLayer) for module in unet.modules())
    state = unet.state_dict()
    assert state.keys() == base_state.keys()
    assert all(torch.equal(state[name], base_state[name]) for name in state)
    assert not unet.training
    assert not any(p.requires_grad for p in unet.parameters())


@pytest.fixture
def base_state(engine: Engine) -> dict[str, torch.Tensor]:
    engine.loras.clear()
    return {name: tensor.clone() for name, tensor in engine.models.pipe.unet.state_dict().items()}


def test_training_moves_lora_from_init_and_lowers_loss_on_a_fixed_batch(engine: Engine, photos, base_state):
    params = resolve_params(TrainParams(**QUICK_TRAIN, mixed_precision="no"), torch.float32, "tiny", len(photos))
    with training_session(engine.models, params, load_photos(photos, params.resolution)) as training:
        lora = {name: p for name, p in training.unet.named_parameters() if p.requires_grad}
        initial = {name: p.detach().clone() for name, p in lora.items()}
        # The same latents, noise and timesteps before and after, so the difference is the LoRA's doing.
        noise = torch.randn(training.latent_mean.shape, generator=torch.Generator().manual_seed(123))
        timesteps = torch.tensor([100, 400, 800])
        with torch.no_grad():
            before = training.loss(training.latent_mean, noise, timesteps).item()
        losses = [training.step() for _ in range(params.max_steps)]
        with torch.no_grad():
            after = training.loss(training.latent_mean, noise, timesteps).item()

    # 4 projections x (A, B) x 2 attentions (self, cross) x 4 transformer blocks (1 down, 1 mid, 2 up)
    assert len(lora) == 4 * 2 * 2 * 4
    assert all(p.dtype == torch.float32 for p in lora.values())
    ups = [name for name in lora if ".lora_B." in name]
    downs = [name for name in lora if ".lora_A." in name]
    # Gaussian init: A random, B zero, so the adapter starts as the identity.
    assert all(initial[name].abs().max() == 0 for name in ups)
    assert all(initial[name].std() > 0 for name in downs)
    assert all((lora[name] - initial[name]).abs().max() > 1e-3 for name in ups + downs)
    assert all(np.isfinite(losses)) and 0.5 < losses[0] < 2
    assert before - after > 0.01, (before, after)
    _assert_unet_is_base(engine, base_state)


def test_train_request_writes_lora_reports_every_step_and_leaves_unet_clean(
    engine: Engine, photos, base_state, tmp_path
):
    output = tmp_path / "nested" / "user.safetensors"
    job = RecordingJob()
    result = engine.train(_request(photos, output, max_steps=3, resolution=64, grad_accum=2), job)

    assert result.output == str(output) and result.steps == 3
    assert result.losses == [loss for _, _, loss in job.steps] and result.final_loss == result.losses[-1]
    assert [(step, total) for step, total, _ in job.steps] == [(1, 3), (2, 3), (3, 3)]
    assert result.params.mixed_precision == "no" and result.params.rank == 4 and result.seconds > 0
    assert result.params.learning_rate == 1e-4  # the seed's LoRA default, reported
    kohya = output.with_name("user.kohya.safetensors")
    assert result.kohya_output == str(kohya)
    assert sorted(output.parent.iterdir()) == [kohya, output]  # no temp file left beside them
    weights = safetensors.torch.load_file(output)
    assert weights and all(key.startswith("unet.") and "lora" in key for key in weights)
    _assert_unet_is_base(engine, base_state)


def test_same_seed_trains_the_same_lora(engine: Engine, photos, tmp_path):
    results = [
        engine.train(
            _request(photos, tmp_path / f"{name}.safetensors", max_steps=2, resolution=64, seed=seed), RecordingJob()
        )
        for name, seed in [("a", 3), ("b", 3), ("c", 4)]
    ]
    a, b, c = (safetensors.torch.load_file(result.output) for result in results)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
    assert results[0].losses == results[1].losses != results[2].losses


def test_saved_lora_loads_with_diffusers_and_changes_the_output(trained_lora: Path, cache_dir: Path):
    pipe = StableDiffusionPipeline.from_pretrained(
        cache_dir / BASE_DIR, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)

    def sample() -> np.ndarray:
        generator = torch.Generator().manual_seed(0)
        return pipe("a photo of sks person", num_inference_steps=2, width=64, height=64, generator=generator,
                    output_type="np").images

    plain = sample()
    pipe.load_lora_weights(str(trained_lora))
    (adapter,) = pipe.get_list_adapters()["unet"]
    config = pipe.unet.peft_config[adapter]
    assert (config.r, config.lora_alpha) == (QUICK_TRAIN["rank"], QUICK_TRAIN["alpha"])  # alpha survives the file
    assert np.abs(sample() - plain).max() > 1e-3


def test_cancel_stops_training_and_leaves_no_file(engine: Engine, photos, base_state, tmp_path):
    job = RecordingJob(cancel_at=2)
    with pytest.raises(Cancelled):
        engine.train(_request(photos, tmp_path / "user.safetensors", max_steps=50, resolution=64), job)
    assert len(job.steps) == 2
    assert list(tmp_path.iterdir()) == []
    _assert_unet_is_base(engine, base_state)


def test_missing_and_unreadable_photos_are_reported(engine: Engine, photos, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    for photo, code in [(str(tmp_path / "missing.png"), "not_found"), (str(broken), "bad_request")]:
        with pytest.raises(EngineError) as error:
            engine.train(_request([photos[0], photo], tmp_path / "user.safetensors", max_steps=1), RecordingJob())
        assert error.value.code == code and photo in error.value.message
    assert sorted(tmp_path.iterdir()) == [broken]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_on_a_float32_base(engine: Engine, photos, tmp_path, precision):
    result = engine.train(
        _request(photos, tmp_path / "user.safetensors", max_steps=2, resolution=64, mixed_precision=precision),
        RecordingJob(),
    )
    assert result.params.mixed_precision == precision and np.isfinite(result.losses).all()
    assert all(t.dtype == torch.float32 for t in safetensors.torch.load_file(result.output).values())


def test_mixed_precision_must_match_a_half_precision_base():
    assert resolve_mixed_precision(None, torch.float32) == "no"
    assert resolve_mixed_precision("bf16", torch.float32) == "bf16"
    assert resolve_mixed_precision(None, torch.float16) == "fp16"
    with pytest.raises(EngineError, match="must be 'fp16'"):
        resolve_mixed_precision("no", torch.float16)


def test_photo_transform_resizes_the_short_side_and_crops_the_centre():
    # A landscape photo: red | green | blue thirds. Center-cropping to a square keeps green in the middle.
    pixels = np.zeros((200, 300, 3), dtype=np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 255
    tensor = photo_tensor(Image.fromarray(pixels), 64)
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    centre = tensor[:, 32, 32]
    assert centre.tolist() == pytest.approx([-1, 1, -1], abs=0.02)
    # The 300 px side became 96: the crop starts 16 px in, inside red (which ends at 32).
    assert tensor[0, 32, 0] > 0.9 and tensor[2, 32, 63] > 0.9

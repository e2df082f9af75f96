"""The optional output check: diffusers' StableDiffusionSafetyChecker over every generated image, flagged ones withheld.

The tiny profile's checker is the real class at a tiny width; a test chooses which image it flags by setting the
thresholds the real code compares against (its concept_embeds_weights buffers).
"""

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker, cosine_distance
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from portrait_engine.config import EngineConfig, parse_config
from portrait_engine.engine import Engine, finish_generation
from portrait_engine.errors import EngineError
from portrait_engine.models import load_models
from portrait_engine.multigen import Generation, denoise_step
from portrait_engine.protocol import GenerateRequest
from portrait_engine.safety import SafetyCheck, load_safety_check

from .support import ENGINE_DIR, RecordingJob

FIXTURES = ENGINE_DIR / "tests" / "fixtures"


@pytest.fixture(scope="module")
def checked(cache_dir: Path) -> Engine:
    return Engine(EngineConfig(profile="tiny", cache_dir=cache_dir, device=torch.device("cpu"), safety="on"))


def _request(folder: Path, **fields) -> GenerateRequest:
    base = dict(prompt="a photo of sks person", steps=2, width=64, height=64, seed=3, num_images=3)
    return GenerateRequest(id="s", op="generate", output_dir=str(folder), **{**base, **fields})


def _pixels(paths: list[str]) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in paths]


@contextmanager
def flagging_only(check: SafetyCheck, images: list[Image.Image], flagged: int):
    """Sets the checker's thresholds so that, of `images`, exactly image `flagged` crosses one concept's: the concept
    that image is nearest to by the widest margin over the others."""
    checker = check.checker
    pixels = check.processor(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(pixels)[1])
        cosines = cosine_distance(embeds, checker.concept_embeds)
    others = torch.cat([cosines[:flagged], cosines[flagged + 1:]]).max(dim=0).values
    margins = cosines[flagged] - others
    concept = int(margins.argmax())
    assert margins[concept] > 0.004, "the images are too alike for a threshold between them"  # above its rounding
    saved = checker.concept_embeds_weights.clone(), checker.special_care_embeds_weights.clone()
    checker.concept_embeds_weights.fill_(2.0)
    checker.special_care_embeds_weights.fill_(2.0)
    checker.concept_embeds_weights[concept] = (cosines[flagged, concept] + others[concept]) / 2
    try:
        yield
    finally:
        checker.concept_embeds_weights.copy_(saved[0])
        checker.special_care_embeds_weights.copy_(saved[1])


def test_off_or_auto_without_a_checker_loads_none(engine: Engine, cache_dir: Path, tmp_path: Path):
    assert engine.config.safety == "auto" and engine.models.safety is None  # the tiny profile installs none
    off = EngineConfig(profile="tiny", cache_dir=cache_dir, device=torch.device("cpu"), safety="off")
    assert load_safety_check(off, off.device, off.dtype) is None
    real = EngineConfig(profile="real", cache_dir=cache_dir, device=torch.device("cpu"), safety_checker=tmp_path / "none")
    assert load_safety_check(real, real.device, real.dtype) is None  # auto: not installed, not loaded
    with pytest.raises(EngineError, match="models command"):
        load_safety_check(EngineConfig(**{**real.__dict__, "safety": "on"}), real.device, real.dtype)


def test_on_loads_the_real_checker_once(checked: Engine):
    check = checked.models.safety
    assert isinstance(check.checker, StableDiffusionSafetyChecker)
    assert isinstance(check.processor, CLIPImageProcessor)
    assert check.checker.device == checked.models.device and not check.checker.training
    assert load_models(checked.config).safety is check


def test_a_flagged_image_is_withheld_and_the_others_pass(checked: Engine, engine: Engine, tmp_path: Path):
    # The unchecked engine makes the same pixels: the reference for what each image is.
    reference = _pixels(engine.generate(_request(tmp_path / "plain"), RecordingJob()).images)
    check = checked.models.safety
    with flagging_only(check, [Image.fromarray(a) for a in reference], flagged=1):
        result = checked.generate(_request(tmp_path / "checked"), RecordingJob())
    assert result.flagged == [1] and len(result.images) == 2
    assert sorted(p.name for p in (tmp_path / "checked").iterdir()) == ["0.png", "1.png"]  # nothing else written
    kept = _pixels(result.images)
    assert np.array_equal(kept[0], reference[0]) and np.array_equal(kept[1], reference[2])


def test_the_batched_path_withholds_too(checked: Engine, engine: Engine, tmp_path: Path):
    request = _request(tmp_path / "batched", num_images=2, seed=9)
    reference = _pixels(engine.generate(_request(tmp_path / "plain", num_images=2, seed=9), RecordingJob()).images)
    generation = Generation(checked.models, request, request.seed, None)
    while not generation.done:
        assert not denoise_step(checked.models, [generation])
    with flagging_only(checked.models.safety, [Image.fromarray(a) for a in reference], flagged=0):
        result = finish_generation(request, generation.finish(), request.seed, 0.0)
    assert result.flagged == [0] and len(result.images) == 1
    assert np.abs(_pixels(result.images)[0].astype(int) - reference[1]).max() <= 2  # batched kernels' rounding


def test_the_tiny_knob_flags_everything_and_nothing_is_written(cache_dir: Path, tmp_path: Path):
    config = parse_config(["--profile", "tiny", "--cache-dir", str(cache_dir), "--device", "cpu", "--safety", "on"],
                          {"ENGINE_TINY_SAFETY_FLAG": "all"})
    result = Engine(config).generate(_request(tmp_path / "all", num_images=2), RecordingJob())
    assert (result.images, result.flagged) == ([], [0, 1])
    assert list((tmp_path / "all").iterdir()) == []


@pytest.mark.parametrize("argv, env", [
    ([], {"ENGINE_TINY_SAFETY_FLAG": "some"}),
    (["--profile", "real", "--base-model", "/m"], {"ENGINE_TINY_SAFETY_FLAG": "all"}),
    (["--safety", "maybe"], {}),
])
def test_bad_safety_settings_stop_with_a_usage_error(argv, env, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv, env)
    assert "error:" in capsys.readouterr().err


def test_a_folder_as_the_models_command_installs_it_loads(checked: Engine, cache_dir: Path, tmp_path: Path):
    # SD1.5's safety_checker/config.json is a transformers 4 dump (with *_config_dict keys): transformers 5 must read
    # it as CLIP ViT-L/14, whose 304 M float32 parameters fill the pinned pytorch_model.bin's 1,216,061,799 bytes.
    config = CLIPConfig.from_pretrained(FIXTURES / "sd15-safety-checker-config.json")
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size) == (1024, 24, 14, 224)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in StableDiffusionSafetyChecker(config).parameters())
    assert 0 < 1_216_061_799 - parameters * 4 < 1_000_000  # the rest: the pickle's names and headers
    # The installed layout (pytorch_model.bin, not safetensors), here with the tiny checker's weights.
    tiny = checked.models.safety.checker
    folder = tmp_path / "safety-checker"
    tiny.config.save_pretrained(folder)
    checked.models.safety.processor.save_pretrained(folder)
    torch.save(tiny.state_dict(), folder / "pytorch_model.bin")
    real = EngineConfig(profile="real", cache_dir=cache_dir, device=torch.device("cpu"), safety_checker=folder)
    check = load_safety_check(real, real.device, real.dtype)  # auto: installed, so loaded
    assert torch.equal(check.checker.concept_embeds, tiny.concept_embeds)


def test_a_withheld_preview_is_not_written_and_the_training_goes_on(cache_dir: Path, tmp_path: Path, photos):
    from portrait_engine.protocol import TrainParams, TrainRequest

    config = parse_config(["--profile", "tiny", "--cache-dir", str(cache_dir), "--device", "cpu", "--safety", "on"],
                          {"ENGINE_TINY_SAFETY_FLAG": "all"})
    job = RecordingJob()
    request = TrainRequest(
        id="p", op="train", photos=photos, output=str(tmp_path / "lora.safetensors"), previews=2, preview_steps=2,
        preview_dir=str(tmp_path / "previews"), params=TrainParams(max_steps=3, resolution=64, seed=3),
    )
    result = Engine(config).train(request, job)
    assert result.steps == 3 and Path(result.output).is_file()
    assert job.previews == [] and not (tmp_path / "previews").exists()

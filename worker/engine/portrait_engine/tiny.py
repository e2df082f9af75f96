"""The tiny profile: SD1.5's architectures at tiny widths with deterministic random weights.

Weights are generated on first use and saved in diffusers layout, so the tiny profile is loaded through exactly the
same from_pretrained path as the real one. Images it makes are noise; everything around them is real.
"""

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

log = logging.getLogger(__name__)

# Bump the suffix whenever the architecture or the seed changes, so stale caches are never reused.
BASE_DIR = "tiny-sd15-v1"
CONTROLNET_DIR = "tiny-controlnet-v1"
SAFETY_DIR = "tiny-safety-checker-v1"
SEED = 0

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408  # SD1.5's: the special tokens sit at 49406/49407

# Stable Diffusion 1.5's scheduler_config.json.
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    # PNDM itself ignores clip_sample, but the schedulers derived from this config (DDIM, DDPM) read it.
    clip_sample=False,
)


def ensure_tiny_models(cache_dir: Path) -> tuple[Path, Path]:
    """Returns (pipeline folder, controlnet folder), generating them if absent."""
    base, controlnet = cache_dir / BASE_DIR, cache_dir / CONTROLNET_DIR
    if not (base.is_dir() and controlnet.is_dir()):
        log.info("generating tiny models in %s", cache_dir)
        pipe, cn = _build()
        _write_atomically(base, pipe.save_pretrained)
        _write_atomically(controlnet, cn.save_pretrained)
    return base, controlnet


def ensure_tiny_safety_checker(cache_dir: Path) -> Path:
    """The tiny safety checker's folder (weights and preprocessor config, as the real one), generated if absent."""
    folder = cache_dir / SAFETY_DIR
    if not folder.is_dir():
        log.info("generating the tiny safety checker in %s", cache_dir)
        checker, processor = _build_safety_checker()

        def save(path: str) -> None:
            checker.save_pretrained(path)
            processor.save_pretrained(path)

        _write_atomically(folder, save)
    return folder


def _build_safety_checker():
    # Imported here: the pipelines module is heavy, and only SAFETY_CHECKER=on needs it.
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        size = 32
        config = CLIPConfig(
            text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, max_position_embeddings=77),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=size, patch_size=8),
            projection_dim=32,
        )
        checker = StableDiffusionSafetyChecker(config)
        # Random concept embeddings (the real ones are CLIP embeddings of the concepts); the thresholds keep the real
        # model's initial 1.0, which a cosine never exceeds: the tiny checker flags nothing unless a test sets them.
        for embeds in (checker.concept_embeds, checker.special_care_embeds):
            torch.nn.init.normal_(embeds)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return checker, processor


def _write_atomically(target: Path, save: Callable[[str], None]) -> None:
    # Save into a private temp dir beside the target and rename it into place: a reader never sees a half-written
    # folder, and when two processes race the loser's identical copy is simply discarded.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent)
    try:
        save(tmp)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build() -> tuple[StableDiffusionPipeline, ControlNetModel]:
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(SEED)
        # Two levels instead of SD1.5's four, with attention only on the lower-resolution one (as in diffusers' own
        # tiny test models): attention over 64x64 latents would make a 512 px step several times slower.
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        # Four blocks as in SD1.5, so latents are 8x smaller than the image, with 4 channels.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=32,
                intermediate_size=64,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                bos_token_id=VOCAB_SIZE - 2,
                eos_token_id=VOCAB_SIZE - 1,
                pad_token_id=1,
            )
        )
        # Its conditioning embedding downsamples 8x, like the real openpose ControlNet's.
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
        # A fresh ControlNet's output convolutions are zero (a no-op until trained); a trained one's are not.
        # Random ones make the tiny ControlNet steer the image, so its wiring is observable.
        for zero_conv in (
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ):
            for parameter in zero_conv.parameters():
                torch.nn.init.normal_(parameter, std=0.05)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe, controlnet


def _tokenizer() -> CLIPTokenizer:
    # A byte-level BPE with no merges: every byte is one token, so any prompt tokenizes without a trained vocabulary.
    with tempfile.TemporaryDirectory() as folder:
        symbols = list(_bytes_to_unicode().values())
        vocab = {symbol: i for i, symbol in enumerate(symbols)}
        vocab |= {f"{symbol}</w>": len(symbols) + i for i, symbol in enumerate(symbols)}
        vocab |= {BOS: VOCAB_SIZE - 2, EOS: VOCAB_SIZE - 1}
        Path(folder, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to a printable unicode character (byte-level BPE's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {
        **{b: chr(b) for b in printable},
        **{b: chr(256 + i) for i, b in enumerate(others)},
    }

"""Writes a Stable Diffusion 1.5 folder (diffusers layout) with SD1.5's exact architectures and random weights.

    python bench/make_random_sd15.py /tmp/sd15

Same compute and memory as the real model, so timings and reference comparisons at full size need no download.
Its tokenizer is the tiny profile's byte-level one (SD1.5's vocabulary size, no merges).
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker" / "engine"))
from portrait_engine.tiny import SD15_SCHEDULER, VOCAB_SIZE, _tokenizer  # noqa: E402


def main(folder: str) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.5's config
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu",
                       bos_token_id=VOCAB_SIZE - 2, eos_token_id=VOCAB_SIZE - 1, pad_token_id=1)
    )
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(), unet=unet,
                                   scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    print(f"{sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M UNet parameters written to {folder}")


if __name__ == "__main__":
    main(sys.argv[1])

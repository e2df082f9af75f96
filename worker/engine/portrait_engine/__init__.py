"""GPU engine of the portrait bot: DreamBooth-LoRA training and Stable Diffusion 1.5 generation over JSON lines."""

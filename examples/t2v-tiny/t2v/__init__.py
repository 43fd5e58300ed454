"""t2v-tiny: a small latent text-to-video diffusion model, trained here.

data (clips and prompts) -> tokenizer -> model (TextEncoder, DiT, VAE, DDIM)
-> pipeline (the three phases as functions, generate) -> measure.
"""

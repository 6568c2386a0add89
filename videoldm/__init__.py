"""videoldm: Video Latent Diffusion Models ("Align your Latents") in JAX/Flax."""

__version__ = "0.1.0"

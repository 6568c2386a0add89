"""The diffusers U-Net and autoencoder configs of figure 1, at mid and SD 1.5 size.

Mid size: SD's architecture at a fraction of its widths (U-Net 64/128/256/256,
two ResBlocks per level, cross-attention to 77 x 256 tokens; VAE 64/128/256/256).
SD 1.5 size: the published widths (U-Net 320/640/1280/1280, 768-d text context;
VAE 128/256/512/512). Both take 32x32x4 latents.
"""

SIZES = ('mid', 'sd15')


def unet_config(size: str) -> dict:
  """`diffusers.UNet2DConditionModel` keyword arguments."""
  config = dict(sample_size=32, in_channels=4, out_channels=4,
                block_out_channels=[64, 128, 256, 256], layers_per_block=2,
                down_block_types=['CrossAttnDownBlock2D'] * 3 + ['DownBlock2D'],
                up_block_types=['UpBlock2D'] + ['CrossAttnUpBlock2D'] * 3,
                attention_head_dim=8, cross_attention_dim=256, norm_num_groups=32)
  if size == 'sd15':
    config.update(block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768)
  elif size != 'mid':
    raise ValueError(f'size {size!r} is not one of {SIZES}.')
  return config


def vae_config(size: str) -> dict:
  """`diffusers.AutoencoderKL` keyword arguments."""
  config = dict(block_out_channels=[64, 128, 256, 256], layers_per_block=2, latent_channels=4,
                down_block_types=['DownEncoderBlock2D'] * 4,
                up_block_types=['UpDecoderBlock2D'] * 4, norm_num_groups=32, sample_size=256)
  if size == 'sd15':
    config.update(block_out_channels=[128, 256, 512, 512])
  elif size != 'mid':
    raise ValueError(f'size {size!r} is not one of {SIZES}.')
  return config

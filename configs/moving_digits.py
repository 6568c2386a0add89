r"""Video LDM on `moving_digits`: every stage of the paper's pipeline at toy size.

Stages (paper Fig. 5), each trained in its own workdir and started from the
previous one with `init_from`:

  autoencoder    KL autoencoder on frames (L1 + KL + patch GAN)
  image          image LDM on frame latents (class labels, CFG dropout)
  video          temporal layers only, prediction model with S in {0, 1, 2}
  interpolation  T -> 4T in-between frames, two frame-rate regimes
  decoder        temporal layers of the autoencoder's decoder (+ 3D patch GAN)
  upsampler_image / upsampler   x4 pixel upsampler, image then temporal

Launch (one stage; `runlocal` shrinks everything to a CPU minute):

  python -m videoldm.main \
    --config=configs/moving_digits.py:stage=video,runlocal \
    --workdir=/tmp/videoldm/video \
    --config.init_from.workdir=/tmp/videoldm/image

The README's quickstart runs `configs/moving_digits_quickstart.py`: this config
with shorter, tuned training and sampling.
"""

import ml_collections

from videoldm import config_utils
from videoldm import stages
from videoldm.data import data_config
from videoldm.models import params as params_lib
from videoldm.models import video_unet
from videoldm.stages import denoising

# Each stage starts from its predecessor's workdir (`init_from`): `videoldm.stages.STAGES`.
TEMPORAL = params_lib.TEMPORAL_PATTERN


def autoencoder_model() -> ml_collections.ConfigDict:
  """Tiny KL autoencoder, f = 4: 32x32x3 frames <-> 8x8x4 latents."""
  return config_utils.typed_nones(ml_collections.ConfigDict(dict(
      in_channels=3, out_channels=3, block_out_channels=(32, 64, 64), layers_per_block=1,
      latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=1.0,
      use_quant_conv=True, use_post_quant_conv=True, mid_block_add_attention=True,
      attention_implementation=None)))


def unet_model() -> ml_collections.ConfigDict:
  """Class-conditional latent U-Net (10 digits + the null class) with temporal layers."""
  config = video_unet.video_unet_config('tiny')
  config.in_channels = config.out_channels = 4
  config.block_out_channels = (64, 128)
  config.num_attention_heads = (2, 4)
  config.attention_levels = (False, True)
  config.cross_attention_dim = None
  config.num_class_embeds = 11
  config.norm_num_groups = 8
  # Scale-shift (AdaGN) ResBlocks: the time + class embedding modulates each normalised
  # feature map instead of adding a bias; better digits (bench/HISTORY.md, "Quickstart image
  # LDM: scale-shift ResBlocks").
  config.resnet_time_scale_shift = 'scale_shift'
  # (3, 1, 1) temporal convs, as the paper-scale configs: as good as (3, 3, 3) for the
  # prediction model and cheaper (bench/HISTORY.md, "Quickstart video model: why the digits
  # changed colour and shape").
  config.temporal.conv_kernel_size = (3, 1, 1)
  return config_utils.typed_nones(config)


def upsampler_unet_model(max_noise_level: int) -> ml_collections.ConfigDict:
  """Pixel-space x4 upsampler: noisy RGB + resized low-res RGB in, noise level as class."""
  config = video_unet.video_unet_config('tiny')
  config.in_channels, config.out_channels = 6, 3
  config.block_out_channels = (16, 32, 64)  # Narrow at full resolution, the costliest level.
  config.temporal.conv_kernel_size = (3, 1, 1)
  config.attention_levels = (False, False, True)
  config.num_attention_heads = (1, 2, 2)
  config.transformer_layers_per_block = (1, 1, 1)
  config.cross_attention_dim = None
  config.num_class_embeds = max_noise_level + 2  # Levels 0..max and the null class.
  config.norm_num_groups = 8
  return config_utils.typed_nones(config)


def get_config(arg=None):
  """`arg`: stage=<name>, runlocal (a CPU minute each)."""
  arg = config_utils.parse_arg(arg, stage='video', variant='tiny', runlocal=False)
  if arg.stage not in stages.CHAIN:
    raise ValueError(f'Unknown stage {arg.stage!r}; expected one of {stages.CHAIN}.')
  if arg.variant != 'tiny':
    raise ValueError(f"Unknown variant {arg.variant!r}; moving_digits has only 'tiny'.")
  config = ml_collections.ConfigDict()
  config.stage = arg.stage
  config.seed = 0
  config.total_steps = 3000
  config.batch_size = 16

  # decay_steps 0: the cosine decay spans all total_steps. grad_clip 0 would turn clipping off.
  config.optimizer = dict(lr=2e-4, warmup_steps=200, decay_steps=0, b1=0.9, b2=0.999,
                          weight_decay=0.0, grad_clip=1.0)
  config.ema_decay = 0.999
  config.trainable = {
      'autoencoder': r'^(autoencoder|discriminator)/',
      'image': r'^unet/',
      'video': r'^unet/.*' + TEMPORAL,
      'interpolation': r'^unet/.*' + TEMPORAL,
      'decoder': r'^(autoencoder/decoder/.*' + TEMPORAL + r'|discriminator/)',
      'upsampler_image': r'^unet/',
      'upsampler': r'^unet/.*' + TEMPORAL,
  }[arg.stage]
  # exempt: new params that keep their init; ignore: source params left behind.
  config.init_from = dict(workdir='', path='', exempt=(), ignore=(), use_ema=True)
  config.init_from.exempt, config.init_from.ignore = {
      'image': ((r'^unet/', r'^latent_scale$'), (r'^discriminator/',)),
      'video': ((TEMPORAL,), ()),
      'interpolation': ((TEMPORAL,), ()),
      'decoder': ((TEMPORAL, r'^discriminator/'), (r'^discriminator/', r'^unet/',
                                                   r'^latent_scale$')),
      'upsampler': ((TEMPORAL,), ()),
  }.get(arg.stage, ((), ()))

  config.mesh = dict(data=-1, fsdp=1)
  config.sharding = dict(rules=(('mlp', 'fsdp'), ('embed', None)))
  # Periods in steps. 0: checkpoints only at the end; no evals, samples or metrics.
  config.checkpoint = dict(every_steps=500, keep=3, async_save=True)
  config.log_every = 50
  config.eval_every = 500
  config.eval_steps = 1
  config.sample_every = 1000
  config.metrics_every = 0  # FID-md / FVD-md of the samples (evaluation/hook.py).
  config.max_consecutive_nonfinite = 10
  config.multiprocess = False

  config.data = data_config.default_data_config()
  config.data.builder_config = 'single'
  config.data.builder_kwargs = dict(num_frames=32)
  # (frames per clip, frame stride) per stage: key frames are 4 frames apart,
  # so one interpolation pass (T -> 4T) gives the dataset's frame rate.
  config.data.num_frames, config.data.frame_stride = {
      'autoencoder': (4, 4), 'image': (4, 4), 'video': (8, 4), 'interpolation': (17, 1),
      'decoder': (8, 1), 'upsampler_image': (2, 8), 'upsampler': (4, 1)}[arg.stage]
  config.data.image_size = 32
  if arg.stage.startswith('upsampler'):  # x4 frames; fewer clips keep generation quick.
    config.data.builder_kwargs = dict(num_frames=32, image_size=128, num_train=400, num_test=40)
    config.data.image_size = 128

  config.diffusion = dict(schedule='scaled_linear', num_train_steps=1000, beta_start=0.00085,
                          beta_end=0.012, prediction_type='eps', loss_weighting='none',
                          min_snr_gamma=5.0)
  if arg.stage.startswith('upsampler'):
    # Pixel space: eps errors are amplified into the x0 estimate near t = T; v-prediction
    # keeps it bounded (as SD 2's v-models).
    config.diffusion.prediction_type = 'v'
  config.sampling = dict(num_steps=50, eta=0.0, timestep_spacing='trailing', steps_offset=0,
                         set_alpha_to_one=True, guidance_scale=2.0, context_guidance=1.5,
                         num_context=2, upsampler_noise_level=50)

  config.model = ml_collections.ConfigDict()
  config.model.autoencoder = autoencoder_model()
  config.model.unet = unet_model()
  config.model.unet.temporal.context_frames = arg.stage in ('video', 'interpolation')
  config.model.unet.temporal.regime_conditioning = arg.stage == 'interpolation'
  config.model.temporal_decoder = dict(merge_strategy='learned_with_images', alpha=0.5,
                                       kernel_size=(3, 1, 1), use_conv_out=True)
  config.model.loss = dict(kl_weight=1e-6, disc_weight=0.5, disc_start=1000, disc_loss='hinge',
                           perceptual_weight=0.0)
  config.model.discriminator = dict(base_channels=64, num_layers=2, norm='group', time_kernel=3)
  if arg.stage == 'decoder':
    # Fine-tunes a trained decoder: the 3D patch GAN from step 0 gives better reconstructed
    # videos (bench/HISTORY.md, "Quickstart temporal decoder: the 3D patch GAN").
    config.model.loss.disc_start = 0
  config.model.calibrate_latent_scale = True
  config.model.centre_latents = True  # Per-channel latent means folded into the autoencoder.
  # > 0: the video stage diffuses the frames (read as p x p patches) with no autoencoder, the
  # pixel-space baseline of bench/ablations.py; model.unet then takes 3 p^2 channels.
  config.model.pixel_patch_size = 0
  config.model.label_dropout = 0.1
  config.model.context_probs = (0.2, 0.4, 0.4)  # P(S = 0), P(S = 1), P(S = 2).
  # Joint image-video training (the video stages; `stages.denoising`): image_fraction of
  # each batch's examples train as images; loss = image_weight L_image + video_weight L_video.
  config.model.joint = denoising.joint_config()
  config.model.interpolation = dict(num_key_frames=2, strides=(4, 1))  # Regimes 0 and 1.
  # Residual: the diffusion model generates only the (small, so scaled up) detail over the
  # resized low-res frames; the plain model redraws digits as blotches (bench/HISTORY.md,
  # "Quickstart x4 upsampler: residual").
  config.model.upsampler = dict(scale=4, max_noise_level=250, patch_size=32, residual=True,
                                residual_scale=8.0)
  config.model.upsampler_unet = upsampler_unet_model(max_noise_level=250)

  if arg.runlocal:
    shrink_to_cpu(config)
  return config


def shrink_to_cpu(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`runlocal`: a full-size config (this file's or the quickstart's) shrunk to a CPU minute."""
  config.total_steps = 30
  config.batch_size = 4
  config.optimizer.warmup_steps = 10
  config.ema_decay = 0.9
  config.checkpoint.every_steps = 0
  config.log_every = 10
  config.eval_every = config.sample_every = 0
  config.data.builder_config = 'tiny'
  config.sampling.num_steps = min(config.sampling.num_steps, 10)
  config.model.autoencoder.block_out_channels = (16, 32, 32)
  config.model.unet.block_out_channels = (32, 64)
  config.model.upsampler_unet.block_out_channels = (16, 32, 32)
  config.model.loss.disc_start = min(config.model.loss.disc_start, 10)
  config.model.discriminator.base_channels = 16
  return config

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
"""

import ml_collections

from videoldm import config_utils
from videoldm import stages
from videoldm.data import data_config
from videoldm.models import params as params_lib
from videoldm.models import video_unet

# Each stage starts from its predecessor's workdir (`init_from`): `videoldm.stages.STAGES`.
TEMPORAL = params_lib.TEMPORAL_PATTERN
# Train steps per stage for `quickstart` (batch 8 on a 2-core CPU). upsampler_image 600:
# between stop 18's 400 (twice the background grain of 800) and 800 (47 s more per 400), for
# time (bench/RESULTS.md, "Quickstart: a narrower autoencoder").
QUICKSTART_STEPS = dict(autoencoder=1200, image=2400, video=200, interpolation=120, decoder=60,
                        upsampler_image=600, upsampler=60)


def autoencoder_model(runlocal: bool) -> ml_collections.ConfigDict:
  """Tiny KL autoencoder, f = 4: 32x32x3 frames <-> 8x8x4 latents."""
  return ml_collections.ConfigDict(dict(
      in_channels=3, out_channels=3, block_out_channels=(32, 64, 64) if not runlocal
      else (16, 32, 32), layers_per_block=1, latent_channels=4,
      norm_num_groups=8, sample_size=32, scaling_factor=1.0, use_quant_conv=True,
      use_post_quant_conv=True, mid_block_add_attention=True,
      attention_implementation=None))


def unet_model(runlocal: bool) -> ml_collections.ConfigDict:
  """Class-conditional latent U-Net (10 digits + the null class) with temporal layers."""
  config = video_unet.video_unet_config('tiny')
  config.in_channels = config.out_channels = 4
  config.block_out_channels = (32, 64) if runlocal else (64, 128)
  config.num_attention_heads = (2, 4)
  config.attention_levels = (False, True)
  config.cross_attention_dim = None
  config.num_class_embeds = 11
  config.norm_num_groups = 8
  # Scale-shift (AdaGN) ResBlocks: the time + class embedding modulates each normalised
  # feature map instead of adding a bias. Quickstart image LDM label agreement 0.737 -> 0.833,
  # FID-md 251 -> 212 (bench/RESULTS.md, "Quickstart image LDM: scale-shift ResBlocks").
  config.resnet_time_scale_shift = 'scale_shift'
  # (3, 1, 1) temporal convs, as the paper-scale configs: as good as (3, 3, 3) for the
  # prediction model at 200 steps and cheaper (bench/RESULTS.md, "Quickstart video model").
  config.temporal.conv_kernel_size = (3, 1, 1)
  return config


def upsampler_unet_model(runlocal: bool, max_noise_level: int) -> ml_collections.ConfigDict:
  """Pixel-space x4 upsampler: noisy RGB + resized low-res RGB in, noise level as class."""
  config = video_unet.video_unet_config('tiny')
  config.in_channels, config.out_channels = 6, 3
  # Narrow at full resolution (128x128 costs 16x the 32x32 level per channel).
  config.block_out_channels = (16, 32, 32) if runlocal else (16, 32, 64)
  config.temporal.conv_kernel_size = (3, 1, 1)
  config.attention_levels = (False, False, True)
  config.num_attention_heads = (1, 2, 2)
  config.transformer_layers_per_block = (1, 1, 1)
  config.cross_attention_dim = None
  config.num_class_embeds = max_noise_level + 2  # Levels 0..max and the null class.
  config.norm_num_groups = 8
  return config


def get_config(arg=None):
  """`arg`: stage=<name>, runlocal (a CPU minute each), quickstart (the README's run)."""
  arg = config_utils.parse_arg(arg, stage='video', variant='tiny', runlocal=False,
                               quickstart=False)
  if arg.stage not in stages.CHAIN:
    raise ValueError(f'Unknown stage {arg.stage!r}; expected one of {stages.CHAIN}.')
  if arg.variant != 'tiny':
    raise ValueError(f"Unknown variant {arg.variant!r}; moving_digits has only 'tiny'.")
  config = ml_collections.ConfigDict()
  config.stage = arg.stage
  config.seed = 0
  config.total_steps = 30 if arg.runlocal else 3000
  config.batch_size = 4 if arg.runlocal else 16
  if arg.quickstart:  # The README's main command: every stage in ~20 CPU minutes.
    config.total_steps = QUICKSTART_STEPS[arg.stage]
    config.batch_size = 8

  config.optimizer = dict(lr=2e-4, warmup_steps=10 if arg.runlocal else 200, decay_steps=None,
                          b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0)
  config.ema_decay = 0.999 if not arg.runlocal else 0.9
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
  config.init_from = dict(workdir='', path='', exempt=[], ignore=[], use_ema=True)
  config.init_from.exempt, config.init_from.ignore = {
      'image': ([r'^unet/', r'^latent_scale$'], [r'^discriminator/']),
      'video': ([TEMPORAL], []),
      'interpolation': ([TEMPORAL], []),
      'decoder': ([TEMPORAL, r'^discriminator/'], [r'^discriminator/', r'^unet/',
                                                    r'^latent_scale$']),
      'upsampler': ([TEMPORAL], []),
  }.get(arg.stage, ([], []))

  config.mesh = dict(data=-1, fsdp=1)
  config.sharding = dict(rules=[('mlp', 'fsdp'), ('embed', None)])
  config.checkpoint = dict(every_steps=None if arg.runlocal else 500, keep=3, async_save=True)
  config.log_every = 10 if arg.runlocal else 50
  config.eval_every = 0 if arg.runlocal else 500
  config.eval_steps = 1
  config.sample_every = 0 if arg.runlocal else 1000
  config.metrics_every = 0  # Steps between FID-md / FVD-md evaluations (0: never).
  config.max_consecutive_nonfinite = 10
  config.multiprocess = False

  config.data = data_config.default_data_config()
  config.data.builder_config = 'tiny' if arg.runlocal else 'single'
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
    # Pixel space: eps errors are amplified by sigma / alpha (~15x at t = T) into
    # the x0 estimate; v-prediction keeps it bounded (as SD 2's v-models).
    config.diffusion.prediction_type = 'v'
  config.sampling = dict(num_steps=10 if arg.runlocal else 50, eta=0.0,
                         timestep_spacing='trailing', steps_offset=0, set_alpha_to_one=True,
                         guidance_scale=2.0, context_guidance=1.5, num_context=2,
                         upsampler_noise_level=50)

  config.model = ml_collections.ConfigDict()
  config.model.autoencoder = autoencoder_model(arg.runlocal)
  config.model.unet = unet_model(arg.runlocal)
  config.model.unet.temporal.context_frames = arg.stage in ('video', 'interpolation')
  config.model.unet.temporal.regime_conditioning = arg.stage == 'interpolation'
  config.model.temporal_decoder = dict(merge_strategy='learned_with_images', alpha=0.5,
                                       kernel_size=(3, 1, 1), use_conv_out=True)
  config.model.loss = dict(kl_weight=1e-6, disc_weight=0.5,
                           disc_start=10 if arg.runlocal else 1000, disc_loss='hinge',
                           perceptual_weight=0.0)
  config.model.discriminator = dict(base_channels=16 if arg.runlocal else 64, num_layers=2,
                                    norm='group', time_kernel=3)
  if arg.stage == 'decoder':  # Fine-tunes a trained decoder: the 3D patch GAN from step 0.
    # Quickstart (60 steps, where disc_start 1000 never came): FVD-md of reconstructions
    # 89.1 -> 74.6, FID-md 138 -> 126 (bench/RESULTS.md, "Quickstart temporal decoder").
    config.model.loss.disc_start = 0
  if arg.quickstart:  # One final video instead of per-stage samples; fewer DDIM steps.
    config.eval_every = config.sample_every = 0
    config.checkpoint.every_steps = None
    config.sampling.num_steps = 25
    config.optimizer.warmup_steps = config.total_steps // 10
    config.optimizer.lr = 5e-4
    config.ema_decay = 0.98  # Short runs: an EMA this short still smooths the last steps.
    # Autoencoder 16/32/64 channels instead of 32/64/64 (0.60x the step), lr 2e-3, 1200 steps:
    # 192 s instead of 255, digit L1 0.239 -> 0.207, FID-md of reconstructions 144 -> 65
    # (bench/RESULTS.md, "Quickstart: a narrower autoencoder"). Every stage of a run shares it.
    config.model.autoencoder.block_out_channels = (16, 32, 64)
    if arg.stage in ('autoencoder', 'image', 'upsampler_image'):  # From scratch: higher lr.
      config.optimizer.lr, config.optimizer.warmup_steps = 1e-3, 50
    if arg.stage == 'autoencoder':  # 1e-3 leaves the narrow autoencoder's colours unlearnt.
      config.optimizer.lr = 2e-3
      config.model.loss.disc_start = config.total_steps  # No 2D patch GAN (1.4x each step).
    if arg.stage == 'image':  # 32 single frames: 32 different digits per step, not 8.
      config.batch_size, config.data.num_frames, config.data.frame_stride = 32, 1, 1
      # Measured at 2000 steps (bench/RESULTS.md, "Quickstart image LDM"): label agreement of
      # samples 0.20 -> 0.37 with lr 2e-3 and Min-SNR-5 weighting.
      config.optimizer.lr = 2e-3
    if arg.stage in ('image', 'video', 'interpolation'):
      # Min-SNR-5 weighting: the image LDM's label agreement 0.27 -> 0.37 (with lr 2e-3); the
      # prediction model's digit colour change 0.34 -> 0.31, FVD-md 348 -> 322 (stop 17).
      config.diffusion.loss_weighting = 'min_snr'
    if arg.stage in ('video', 'interpolation'):  # New temporal layers, from zero outputs.
      # Measured on the prediction model (bench/RESULTS.md, "Quickstart video model"):
      # identity 0.44 -> 0.62 with lr 2e-3 (4e-3 no better); with the context in the temporal
      # branch, context guidance 5 (Eq. 4) vs 1.5: identity 0.70 -> 0.74, FID-md 208 -> 175.
      config.optimizer.lr = 2e-3
      config.sampling.context_guidance = 5.0
    if arg.stage in ('image', 'video'):
      # Stochastic DDIM (eta 1) corrects these short-trained models' errors as it goes: image
      # LDM label agreement 0.68 -> 0.74; whole-stack videos (96) label agreement 0.63 -> 0.70,
      # identity 0.64 -> 0.72, FID-md 199 -> 175 (stop 18). Interpolation stays deterministic.
      config.sampling.eta = 1.0
    if arg.stage == 'video':  # With eta 1, context guidance 8 vs 5: identity 0.79 -> 0.81,
      config.sampling.context_guidance = 8.0  # FVD-md 302 -> 291, FID-md 131 -> 114 (stop 18).
    if arg.stage.startswith('upsampler'):  # Conditioned on the low-res frames: few steps do.
      config.sampling.num_steps = 5  # 10 -> 5: ~30 s less sampling, a little more grain.
    # Label CFG 6 (sampling only): label agreement of the quickstart's videos 0.34 -> 0.55,
    # FID-md 331 -> 260 vs CFG 2 (bench/RESULTS.md, "Quickstart image LDM").
    config.sampling.guidance_scale = 6.0
  config.model.calibrate_latent_scale = True
  config.model.centre_latents = True  # Per-channel latent means folded into the autoencoder.
  config.model.label_dropout = 0.1
  config.model.context_probs = (0.2, 0.4, 0.4)  # P(S = 0), P(S = 1), P(S = 2).
  config.model.interpolation = dict(num_key_frames=2, strides=(4, 1))  # Regimes 0 and 1.
  # Residual: the diffusion model generates only the detail over the resized low-res frames,
  # x8 (that detail has std 0.04). At 800 steps the plain model redraws digits as blotches:
  # digit-pixel L1 0.20 -> 0.055, background grain 0.022 -> 0.006 (bench/RESULTS.md,
  # "Quickstart x4 upsampler: residual").
  config.model.upsampler = dict(scale=4, max_noise_level=250, patch_size=32, residual=True,
                                residual_scale=8.0)
  config.model.upsampler_unet = upsampler_unet_model(arg.runlocal, max_noise_level=250)
  return config

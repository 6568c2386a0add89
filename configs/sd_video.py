r"""Stable Diffusion -> text-to-video Video LDM (paper Sec. 4.2): the whole text stack.

The spatial layers (U-Net, VAE, CLIP text encoder, tokenizer) come from an SD
1.x / 2.x pipeline folder (`sd_path=`) and SD's x4 upscaler folder
(`upscaler_path=`) and stay frozen; temporal layers are trained at 320x512 on
captioned video: a folder or a .csv/.jsonl manifest of video files
(`video_dir=`, decoded on the fly; videoldm/data/video_index.py), or any TFDS
video dataset with captions. `stage=`:

  text_image          optional: SD's U-Net fine-tuned on frames as captioned images
  text_video          key frames; also a prediction model (S in {0, 1, 2} context frames)
  text_interpolation  T -> 4T (Sec. 3.3), from the key-frame run (`init_workdir=`)
  text_decoder        temporal layers in SD's VAE decoder, 3D patch GAN (Sec. 3.1.1)
  text_upsampler      temporal layers in the x4 upscaler, Eq. 5 noise augmentation (Sec. 3.4)

Launch (convert each folder once, then train the chain in one run folder):

  python -m videoldm.convert.temporal_transfer --sd_path=/models/sd15 \
    --out=/models/sd15/videoldm_params.safetensors
  python -m videoldm.convert.temporal_transfer --sd_path=/models/sd_x4_upscaler \
    --out=/models/sd_x4_upscaler/videoldm_params.safetensors
  python -m videoldm.train_chain --workdir=/tmp/sd_run --config_file=configs/sd_video.py \
    --config_arg=sd_path=/models/sd15,upscaler_path=/models/sd_x4_upscaler,video_dir=/data/webvid
  python -m videoldm.sample --workdir=/tmp/sd_run \
    --text="a bear walking in the snow" --interpolation_passes=1 --upsample

`runlocal` shrinks everything to a CPU minute per stage on the tiny random
folders that `videoldm.convert.tiny_sd` writes (`write_tiny_sd`,
`write_tiny_upscaler`) and the captioned `moving_digits` tiny dataset.
`init_path` overrides where the converted params are read from (default:
`<sd_path or upscaler_path>/videoldm_params.safetensors`).
"""

import dataclasses
import json
import os

import ml_collections

from videoldm import config_utils
from videoldm.convert import diffusers as diffusers_convert
from videoldm.convert import loaders
from videoldm.data import data_config
from videoldm.diffusion import parametrization
from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import text as text_lib
from videoldm.models import unet as unet_lib
from videoldm.models import params as params_lib
from videoldm.models import video_unet
from videoldm.stages import denoising

TEMPORAL = params_lib.TEMPORAL_PATTERN


def backbone_configs(path: str, variant: str) -> tuple:
  """(unet, autoencoder, text encoder) ConfigDicts, from the pipeline folder `path` when it
  exists, else the published layout of `variant` ('sd15', 'sd21' or 'sd_x4_upscaler')."""
  if path and os.path.isdir(path):
    unet = diffusers_convert.unet_config_from_diffusers(
        loaders.read_config(os.path.join(path, 'unet')))
    ae = autoencoder_lib.autoencoder_config_from_diffusers(
        loaders.read_config(os.path.join(path, 'vae')))
    text = text_lib.clip_text_config_from_transformers(
        loaders.read_config(os.path.join(path, 'text_encoder')))
  elif variant == 'sd_x4_upscaler':  # Its text encoder is SD 2's OpenCLIP.
    unet = unet_lib.unet_config(variant)
    ae = autoencoder_lib.autoencoder_config(variant)
    text = text_lib.clip_text_config('sd21')
  else:  # The published layouts, so the config can be inspected before download.
    unet = unet_lib.unet_config(variant)
    ae = autoencoder_lib.AutoencoderConfig()
    text = text_lib.clip_text_config(variant)
  return (unet, ml_collections.ConfigDict(dataclasses.asdict(ae)),
          ml_collections.ConfigDict(dataclasses.asdict(text)))


def diffusion_config(path: str, variant: str) -> ml_collections.ConfigDict:
  """The training schedule of `path/scheduler/scheduler_config.json` when it exists, else
  the published one of `variant` (SD: betas 0.00085..0.012; the x4 upscaler: 1e-4..0.02,
  v-prediction, also its Eq. 5 noise augmentation's, as its two schedulers share betas)."""
  upscaler = variant == 'sd_x4_upscaler'
  values = dict(beta_schedule='scaled_linear', beta_start=0.0001 if upscaler else 0.00085,
                beta_end=0.02 if upscaler else 0.012, num_train_timesteps=1000,
                prediction_type='v' if variant in ('sd21', 'sd_x4_upscaler') else 'eps')
  scheduler = os.path.join(path, 'scheduler', 'scheduler_config.json') if path else ''
  if scheduler and os.path.isfile(scheduler):
    with open(scheduler, encoding='utf-8') as f:
      values.update({k: v for k, v in json.load(f).items() if k in values})
  return ml_collections.ConfigDict(dict(
      schedule=values['beta_schedule'], num_train_steps=values['num_train_timesteps'],
      beta_start=values['beta_start'], beta_end=values['beta_end'],
      prediction_type=parametrization.canonical_prediction_type(values['prediction_type']),
      loss_weighting='none', min_snr_gamma=5.0))


def params_file(folder: str) -> str:
  """Where `python -m videoldm.convert.temporal_transfer` writes a folder's params."""
  return os.path.join(folder, 'videoldm_params.safetensors') if folder else ''


STAGES = ('text_image', 'text_video', 'text_interpolation', 'text_decoder', 'text_upsampler')
# Sources of the spatial params: the SD folder's converted file, or the previous stage's run.
SD_SPATIAL = ('text_image', 'text_decoder')


def get_config(arg=None):
  """`arg`: stage=text_image|text_video|text_interpolation|text_decoder|text_upsampler,
  sd_path=<folder>, sd_version=sd15|sd21, upscaler_path=<folder>, video_dir=<folder or
  manifest>, init_path=, init_workdir=, runlocal."""
  arg = config_utils.parse_arg(arg, stage='text_video', sd_path='', sd_version='sd15',
                               upscaler_path='', video_dir='', init_path='', init_workdir='',
                               runlocal=False)
  if arg.sd_version not in ('sd15', 'sd21'):
    raise ValueError(f"sd_version={arg.sd_version!r} is not 'sd15' or 'sd21'.")
  if arg.stage not in STAGES:
    raise ValueError(f'stage={arg.stage!r} is not one of {STAGES}.')
  stage = arg.stage
  interpolating = stage == 'text_interpolation'
  upsampling = stage == 'text_upsampler'
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.seed = 0
  config.total_steps = 100_000
  config.batch_size = {'text_decoder': 16, 'text_upsampler': 16}.get(stage, 64)
  # decay_steps 0: the cosine decay spans all total_steps. grad_clip 0 would turn clipping off.
  config.optimizer = dict(lr=1e-4, warmup_steps=1000, decay_steps=0, b1=0.9, b2=0.999,
                          weight_decay=0.0, grad_clip=1.0)
  config.ema_decay = 0.9999
  config.trainable = {
      'text_image': r'^unet/',
      'text_decoder': r'^(autoencoder/decoder/.*' + TEMPORAL + r'|discriminator/)',
  }.get(stage, r'^unet/.*' + TEMPORAL)
  # exempt: new params that keep their init; ignore: source params left behind.
  source = params_file(arg.upscaler_path if upsampling else arg.sd_path)
  config.init_from = dict(workdir='', path=arg.init_path or source, exempt=(TEMPORAL,),
                          ignore=(), use_ema=False)
  if stage == 'text_image':
    config.init_from.exempt = ()
  if stage == 'text_decoder':  # The SD VAE; the 3D discriminator is new.
    config.init_from.exempt = (TEMPORAL, r'^discriminator/')
    config.init_from.ignore = (r'^unet/', r'^text_encoder/', r'^latent_scale$')
  if interpolating or (stage == 'text_video' and arg.init_workdir):
    # From the previous stage's EMA params (text_video, or text_image's fine-tuned spatial
    # layers); new params (temporal layers, regime inputs) start at their init.
    config.init_from = dict(workdir=arg.init_workdir, path='', exempt=(TEMPORAL,), ignore=(),
                            use_ema=True)

  config.mesh = dict(data=-1, fsdp=1)
  config.sharding = dict(rules=(('mlp', 'fsdp'), ('embed', None)))
  # Periods in steps. 0: checkpoints only at the end; no evals, samples or metrics.
  config.checkpoint = dict(every_steps=2000, keep=3, async_save=True)
  config.log_every = 50
  config.eval_every = 2000
  config.eval_steps = 1
  config.sample_every = 5000
  config.metrics_every = 0  # Digit metrics need a moving_digits dataset (evaluation/hook.py).
  config.max_consecutive_nonfinite = 10
  config.multiprocess = False

  config.data = data_config.default_data_config()
  config.data.name = 'videos'  # Decoded on the fly from a folder or manifest.
  config.data.source = arg.video_dir
  config.data.split, config.data.eval_split = 'train[:99%]', 'train[99%:]'
  # (frames, stride): key frames; interpolation windows of 17 frames (5 key frames) at window
  # strides 4 and 1; the decoder and upsampler at the final frame rate; images for text_image.
  config.data.num_frames, config.data.frame_stride = {
      'text_image': (4, 8), 'text_video': (16, 2), 'text_interpolation': (65, 1),
      'text_decoder': (8, 1), 'text_upsampler': (8, 1)}[stage]
  config.data.image_size, config.data.image_width = 320, 512  # = model.frame_size.
  config.data.num_workers = 8

  backbone = arg.upscaler_path if upsampling else arg.sd_path
  unet, autoencoder, text_encoder = backbone_configs(
      backbone, 'sd_x4_upscaler' if upsampling else arg.sd_version)
  unet.temporal = video_unet.temporal_config()
  unet.temporal.text_context = True
  unet.temporal.context_frames = stage in ('text_video', 'text_interpolation')
  unet.temporal.regime_conditioning = interpolating
  unet.temporal.conv_kernel_size = (3, 1, 1)
  unet.dtype = 'bfloat16'
  config.diffusion = diffusion_config(backbone,
                                      'sd_x4_upscaler' if upsampling else arg.sd_version)
  unet.prediction_type = config.diffusion.prediction_type
  config.sampling = dict(num_steps=50, eta=0.0, timestep_spacing='trailing', steps_offset=0,
                         set_alpha_to_one=True, guidance_scale=9.0 if upsampling else 7.5,
                         context_guidance=1.5, num_context=1, upsampler_noise_level=20)

  config.model = ml_collections.ConfigDict()
  config.model.sd_path = backbone
  config.model.tokenizer_path = os.path.join(backbone, 'tokenizer') if backbone else ''
  config.model.unet = config_utils.typed_nones(unet)
  config.model.autoencoder = config_utils.typed_nones(autoencoder)
  config.model.text_encoder = config_utils.typed_nones(text_encoder)
  config.model.text_output = 'last'  # CLIP context: 'last' or 'penultimate' hidden states.
  config.model.frame_size = (320, 512)  # (h, w) centre crop.
  config.model.caption_dropout = 0.1
  config.model.context_probs = (0.5, 0.25, 0.25)  # P(S = 0), P(S = 1), P(S = 2).
  # Joint image-video training (the video stages; `stages.denoising`): image_fraction of
  # each batch's examples train as images; loss = image_weight L_image + video_weight L_video.
  config.model.joint = denoising.joint_config()
  # text_interpolation: K key frames per window of 4 (K - 1) + 1 frames; the window's frame
  # stride in regime 0 (T -> 4T) and 1 (4T -> 16T). Key frames sampled at data.frame_stride
  # 4 (one pass) or 16 (two passes) match them.
  config.model.interpolation = dict(num_key_frames=5, strides=(4, 1))
  config.model.calibrate_latent_scale = False  # SD's scaling_factor is kept.
  config.model.centre_latents = False  # SD's VAE is used as released.
  config.model.remat = 'blocks'  # '' or 'blocks'.
  config.model.remat_policy = 'nothing_saveable'
  config.model.decode_chunk = 8  # Frames per VAE decoder call (0: all at once).
  # text_decoder (Sec. 3.1.1): temporal layers in SD's VAE decoder against a 3D patch GAN.
  config.model.temporal_decoder = dict(merge_strategy='learned_with_images', alpha=0.5,
                                       kernel_size=(3, 1, 1), use_conv_out=True)
  config.model.loss = dict(kl_weight=1e-6, disc_weight=0.5, disc_start=0, disc_loss='hinge',
                           perceptual_weight=0.0)
  config.model.discriminator = dict(base_channels=64, num_layers=3, norm='group', time_kernel=3)
  # text_upsampler (Sec. 3.4): x4 from the key-frame size; patch_size 0 trains on whole frames
  # (320x512 -> 80x128 latents); sampling runs the U-Net and decoder on `tile` latent pixels.
  config.model.upsampler = dict(scale=4, max_noise_level=350, patch_size=0, tile=(128, 128),
                                tile_overlap=32)

  if arg.runlocal:  # A CPU minute, on the captioned moving_digits tiny dataset.
    config.total_steps, config.batch_size = 3, 2
    config.optimizer.warmup_steps = 1
    config.ema_decay = 0.9
    config.checkpoint.every_steps = 0
    config.log_every = 1
    config.eval_every = config.sample_every = 0
    config.data = data_config.default_data_config()
    config.data.builder_config = 'tiny'
    config.data.num_frames, config.data.image_size = 4, 32
    if interpolating:  # 2 key frames: windows of 5 frames, 17 source frames at stride 4.
      config.data.builder_kwargs = dict(num_frames=17)
      config.data.num_frames = 17
      config.model.interpolation.num_key_frames = 2
    config.model.unet.temporal.conv_kernel_size = (3, 3, 3)
    config.model.unet.dtype = 'float32'
    config.sampling.num_steps = 2
    config.model.frame_size = (16, 32)
    config.model.remat = ''
    config.model.decode_chunk = 2
    config.model.discriminator.update(base_channels=16, num_layers=2)
    if stage in ('text_decoder', 'text_upsampler'):  # The whole 32x32 frame.
      config.data.num_frames = 2 if upsampling else 4
      config.model.frame_size = (32, 32)
      config.model.upsampler.tile = (0, 0)
  return config

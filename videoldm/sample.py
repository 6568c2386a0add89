r"""Samples a video from a trained Video LDM run.

  python -m videoldm.sample --workdir=/tmp/videoldm_quickstart \
      --num_frames=61 --labels=3,7 --out=/tmp/digits.mp4 --gif

`--workdir` is a run folder with one workdir per stage (`image`, `video`,
`interpolation`, `decoder`, `upsampler`, as the quickstart writes them), or a
`python -m videoldm.export --format=safetensors` folder. Text-to-video runs
(`configs/sd_video.py`) take `--text="a prompt"` (repeat for more videos) in
place of `--labels`; `--spatial_from=<SD folder or checkpoint>` puts the
trained temporal layers on another image backbone (e.g. DreamBooth):

  python -m videoldm.sample --workdir=/tmp/sd_export --text="a sks dog running" \
      --interpolation_passes=0 --spatial_from=/models/sd15_dreambooth

A text run trained by `videoldm.train_chain` also has `decoder/` (SD's VAE with a
temporal decoder) and `upsampler/` (the x4 latent video upsampler, which
tokenizes the prompts with its own text encoder): `--upsample` gives 4x the
key-frame size.

Start from your own media (label or text mode): `--first_frame=img.png` begins
every video with the image (through the run's autoencoder, so up to its
round trip); `--continue_video=clip.mp4` writes the clip's frames unchanged
and appends `--num_frames` new ones, with its last key frames as context.
Both are scaled to cover the model's frame size and centre-cropped.
Writes the MP4 (and GIF with `--gif`) and `<out>_frames.png`, a contact sheet
of every 4th frame, one row per video; existing files are kept unless `--overwrite`.
"""

from absl import app
from absl import flags
from absl import logging

from videoldm import host_devices
from videoldm import logs
from videoldm.pipelines import generate
from videoldm.pipelines import video_ldm

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder with one workdir per stage.')
_OUT = flags.DEFINE_string('out', 'video.mp4', 'Output MP4 path.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', None, 'Frames to generate (default 29).')
_SECONDS = flags.DEFINE_float('seconds', None, 'Length in seconds (num_frames = seconds * fps).')
_FPS = flags.DEFINE_float('fps', 8.0, 'Frame rate of the written video.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_LABELS = flags.DEFINE_list('labels', ['3'], 'Class labels, one video per label.')
_TEXT = flags.DEFINE_multi_string('text', None, 'Text prompt (text-conditioned models); '
                                   'repeat for several videos.')
_SPATIAL_FROM = flags.DEFINE_string('spatial_from', None, 'SD folder or checkpoint whose spatial '
                                    'layers replace the run\'s (temporal transfer).')
_GUIDANCE = flags.DEFINE_float('guidance_scale', None, 'Classifier-free guidance scale.')
_CONTEXT_GUIDANCE = flags.DEFINE_float('context_guidance', None, 'Context guidance scale (Eq. 4).')
_STEPS = flags.DEFINE_integer('num_steps', None, 'DDIM steps per window.')
_ETA = flags.DEFINE_float('eta', None, 'DDIM eta (0 = deterministic).')
_INTERPOLATION = flags.DEFINE_integer('interpolation_passes', 1, 'T -> 4T passes: 0, 1 or 2.')
_UPSAMPLE = flags.DEFINE_bool('upsample', False, 'Apply the x4 video upsampler.')
_WINDOW = flags.DEFINE_integer('window_frames', None, 'Frames per prediction window.')
_FIRST_FRAME = flags.DEFINE_string('first_frame', None, 'Image the videos start from.')
_CONTINUE = flags.DEFINE_string('continue_video', None, 'Video file to continue (appended to).')
_GIF = flags.DEFINE_bool('gif', False, 'Also write a GIF next to the MP4.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace existing output files.')


def settings_from_flags() -> video_ldm.Settings:
  if _NUM_FRAMES.value is not None and _SECONDS.value is not None:
    raise ValueError('Give --num_frames or --seconds, not both.')
  num_frames = _NUM_FRAMES.value or (round(_SECONDS.value * _FPS.value) if _SECONDS.value
                                     else 29)
  try:
    labels = tuple(int(label) for label in _LABELS.value)
  except ValueError:
    raise ValueError(f'--labels={",".join(_LABELS.value)} must be integers.') from None
  prompts = tuple(_TEXT.value or ())
  return video_ldm.Settings(
      prompts=prompts,
      num_frames=num_frames, labels=labels, seed=_SEED.value, guidance_scale=_GUIDANCE.value,
      context_guidance=_CONTEXT_GUIDANCE.value, num_steps=_STEPS.value, eta=_ETA.value,
      interpolation_passes=_INTERPOLATION.value, upsample=_UPSAMPLE.value,
      window_frames=_WINDOW.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required.')
  host_devices.keep_freed_memory()
  host_devices.use_one_device_per_core()  # Before JAX starts: the videos split over the cores.
  logs.quiet_libraries()
  count = generate.generate(_WORKDIR.value, settings_from_flags(), _OUT.value, _FPS.value,
                            _GIF.value, spatial_from=_SPATIAL_FROM.value,
                            overwrite=_OVERWRITE.value, first_frame=_FIRST_FRAME.value,
                            continue_video=_CONTINUE.value)
  logging.info('Done: %d frames in %s.', count, _OUT.value)


if __name__ == '__main__':
  app.run(main)

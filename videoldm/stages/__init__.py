"""The stages of the system, in one table: name -> class, role, predecessor.

`CHAIN` is the order in which the paper's Fig. 5 stack is trained (each stage
started, with `init_from`, from `STAGES[name].init_from`), `TEXT_CHAIN` that of
the Stable Diffusion text stack; `SAMPLING_ROLES` is the order of the sampling
stack. `register_stage` adds a stage defined
outside this package (e.g. a research variant) to the same table.
"""

import dataclasses

from videoldm.stages import autoencoder
from videoldm.stages import decoder
from videoldm.stages import image
from videoldm.stages import interpolation
from videoldm.stages import text_image
from videoldm.stages import text_interpolation
from videoldm.stages import text_upsampler
from videoldm.stages import text_video
from videoldm.stages import upsampler
from videoldm.stages import video
from videoldm.stages.base import Stage


@dataclasses.dataclass(frozen=True)
class StageEntry:
  """A stage class, its role in the sampling stack (None: training only), its predecessor."""
  cls: type[Stage]
  role: str | None = None
  init_from: str | None = None


STAGES: dict[str, StageEntry] = {
    'autoencoder': StageEntry(autoencoder.AutoencoderStage),
    'image': StageEntry(image.ImageStage, role='image', init_from='autoencoder'),
    'video': StageEntry(video.VideoStage, role='video', init_from='image'),
    'interpolation': StageEntry(interpolation.InterpolationStage, role='interpolation',
                                init_from='video'),
    # From the image stage: it fine-tunes the (latent-centred) autoencoder the LDM uses.
    'decoder': StageEntry(decoder.DecoderStage, role='decoder', init_from='image'),
    'upsampler_image': StageEntry(upsampler.ImageUpsamplerStage),
    'upsampler': StageEntry(upsampler.UpsamplerStage, role='upsampler',
                            init_from='upsampler_image'),
    # Stable Diffusion to video (paper Sec. 4.2); spatial layers from SD and its x4 upscaler.
    'text_image': StageEntry(text_image.TextImageStage),
    'text_video': StageEntry(text_video.TextVideoStage, role='video', init_from='text_image'),
    'text_interpolation': StageEntry(text_interpolation.TextInterpolationStage,
                                     role='interpolation', init_from='text_video'),
    'text_decoder': StageEntry(decoder.DecoderStage, role='decoder'),
    'text_upsampler': StageEntry(text_upsampler.TextUpsamplerStage, role='upsampler'),
}
CHAIN = ('autoencoder', 'image', 'video', 'interpolation', 'decoder', 'upsampler_image',
         'upsampler')
# The Stable Diffusion text stack (Sec. 4.2) in training order; `text_image` (the optional
# spatial fine-tune) starts it when chosen, and `text_video` then starts from it.
TEXT_CHAIN = ('text_image', 'text_video', 'text_interpolation', 'text_decoder', 'text_upsampler')
# Stages a chain trains only when asked (`videoldm.train_chain --stages`).
OPTIONAL = ('text_image',)
SAMPLING_ROLES = ('image', 'video', 'interpolation', 'decoder', 'upsampler')


def register_stage(name: str, cls: type[Stage], role: str | None = None) -> type[Stage]:
  """Adds (or replaces) the stage `name`; `cls` must subclass `Stage`."""
  if not (isinstance(cls, type) and issubclass(cls, Stage)):
    raise ValueError(f'Stage {name!r} must be a subclass of Stage, got {cls!r}.')
  if role is not None and role not in SAMPLING_ROLES:
    raise ValueError(f'Stage {name!r} has role {role!r}; expected one of {SAMPLING_ROLES}.')
  STAGES[name] = StageEntry(cls, role)
  return cls


def get_stage(name: str) -> type[Stage]:
  """The stage class registered as `name`; an unknown name is a ValueError listing known ones."""
  if name not in STAGES:
    raise ValueError(f'Unknown stage {name!r}; expected one of {sorted(STAGES)}.')
  return STAGES[name].cls


def role_of(name: str) -> str:
  """The stage's role in the sampling stack; a ValueError for training-only stages."""
  role = STAGES[name].role if name in STAGES else None
  if role is None:
    raise ValueError(f'Stage {name!r} has no role in the sampling stack; expected one of '
                     f'{sorted(n for n, e in STAGES.items() if e.role)}.')
  return role


__all__ = ['CHAIN', 'OPTIONAL', 'SAMPLING_ROLES', 'STAGES', 'Stage', 'StageEntry', 'TEXT_CHAIN',
           'get_stage', 'register_stage', 'role_of']

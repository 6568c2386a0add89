"""Rematerialised video U-Nets: `nn.remat` on every block, the same params.

`model.remat`: '' (off) or 'blocks'; `model.remat_policy`: a
`jax.checkpoint_policies` name ('nothing_saveable', ...).
"""

import dataclasses
import functools

import flax.linen as nn
import jax

from videoldm.models import video_unet as video_unet_lib

REMAT_MODES = ('', 'blocks')


def remat_block(block_cls, policy):
  """`block_cls` whose call is rematerialised (`nn.remat`) with `policy`.

  The block's call-time `FrameInfo` carries a static frame count next to
  arrays, so it is split into both and rebuilt inside the remat'd function.
  """

  class RematBlock(block_cls):

    def __call__(self, *args):
      *leading, deterministic, extra = args
      arrays = {f.name: getattr(extra, f.name) for f in dataclasses.fields(extra)
                if f.name != 'num_frames'}
      num_frames = extra.num_frames

      def body(module, leading, arrays):
        info = video_unet_lib.FrameInfo(num_frames, **arrays)
        return block_cls.__call__(module, *leading, deterministic, info)

      return nn.remat(body, policy=policy)(self, leading, arrays)

  RematBlock.__name__ = block_cls.__name__
  return RematBlock


@functools.cache
def remat_unet_class(policy_name: str) -> type[video_unet_lib.VideoUNet]:
  """A `VideoUNet` subclass with rematerialised blocks (same params)."""
  policy = getattr(jax.checkpoint_policies, policy_name, None)
  if policy is None:
    raise ValueError(f'model.remat_policy={policy_name!r} is not a jax.checkpoint_policies '
                     "name (e.g. 'nothing_saveable', 'dots_saveable').")

  class RematVideoUNet(video_unet_lib.VideoUNet):
    down_block_cls = remat_block(video_unet_lib.VideoDownBlock, policy)
    mid_block_cls = remat_block(video_unet_lib.VideoMidBlock, policy)
    up_block_cls = remat_block(video_unet_lib.VideoUpBlock, policy)

  return RematVideoUNet


def make_unet(model_config) -> video_unet_lib.VideoUNet:
  """The video U-Net of `model_config`, rematerialised when `model_config.remat`."""
  mode = model_config.get('remat', '')
  if mode not in REMAT_MODES:
    raise ValueError(f'model.remat={mode!r} is not one of {REMAT_MODES}.')
  if not mode:
    return video_unet_lib.VideoUNet(model_config.unet)
  return remat_unet_class(model_config.get('remat_policy', 'nothing_saveable'))(
      model_config.unet)

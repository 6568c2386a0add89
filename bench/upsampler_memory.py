"""Peak memory of the x4 latent video upsampler (`text_upsampler`) at 1x, 2x, 4x output area.

XLA's compiled memory analysis of one `upsample` call (a window of frames,
text guidance, every DDIM step, the f=4 decode), with abstract params (nothing
is allocated or run): arguments + outputs + temporaries. Sampling runs the U-Net
and the decoder on `model.upsampler.tile` latent tiles, so the temporaries (the
activations) should not grow with the output area; the untiled call at the
largest area is the comparison. `--size=paper` is `configs/sd_video.py:
stage=text_upsampler` (SD's x4 upscaler + temporal layers, bf16, 128x128
latent tiles, 1x = a 512x512 output); `--size=cpu` a quarter-width U-Net.

  python bench/upsampler_memory.py [--size=paper] [--frames=8]
"""

import argparse
import os
import tempfile

import common  # pylint: disable=unused-import  (puts the repository on sys.path)

import jax
import jax.numpy as jnp

from videoldm import config_utils
from videoldm import stages
from videoldm.convert import tiny_sd
from videoldm.diffusion import sampling

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--size', default='paper', choices=('paper', 'cpu'))
PARSER.add_argument('--frames', type=int, default=8, help='frames per upsampling window')
PARSER.add_argument('--steps', type=int, default=50, help='DDIM steps')
ARGS = PARSER.parse_args()
GIB = 2.0**30


def make_stage(tokenizer: str):
  config = config_utils.load_config(os.path.join(common.REPO, 'configs',
                                                 'sd_video.py:stage=text_upsampler'))
  overrides = {'model.tokenizer_path': tokenizer}
  if ARGS.size == 'cpu':
    overrides['model.unet.block_out_channels'] = (64, 128, 128, 256)
    overrides['model.unet.num_attention_heads'] = (2, 2, 2, 2)
  return stages.get_stage('text_upsampler')(config_utils.override(config, **overrides))


def memory(stage, params, low_shape, tile) -> dict:
  """Bytes of one compiled `upsample` of `low_shape` frames with latent tiles `tile`."""
  stage.options.unlock()
  stage.options.tile = tile
  options = sampling.SamplingOptions(num_steps=ARGS.steps, guidance_scale=9.0)
  ids = jax.ShapeDtypeStruct((1, stage.text_length), jnp.int32)
  fn = jax.jit(lambda p, x, i: stage.upsample(p, x, jax.random.key(0), options, i))
  analysis = fn.lower(params, jax.ShapeDtypeStruct(low_shape, jnp.float32),
                      ids).compile().memory_analysis()
  return dict(arguments=analysis.argument_size_in_bytes, outputs=analysis.output_size_in_bytes,
              temporaries=analysis.temp_size_in_bytes,
              peak=analysis.argument_size_in_bytes + analysis.output_size_in_bytes
              + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def main():
  with tempfile.TemporaryDirectory() as tokenizer:
    tiny_sd.write_tokenizer(tokenizer)
    stage = make_stage(tokenizer)
    batch = dict(video=jax.ShapeDtypeStruct((1, 1, 32, 32, 3), jnp.float32),
                 caption=jax.ShapeDtypeStruct((1, stage.text_length), jnp.int32))
    params = jax.eval_shape(stage.init_params, jax.random.key(0), batch)
    tile = tuple(stage.options.tile)
    side = tile[0]  # 1x: one tile of latents (= low-res pixels).
    rows = []
    for name, (h, w), t in (('1x', (side, side), tile), ('2x', (side, 2 * side), tile),
                            ('4x', (2 * side, 2 * side), tile),
                            ('4x untiled', (2 * side, 2 * side), (0, 0)),
                            ('10x', (5 * side // 2, 4 * side), tile)):  # paper: 1280x2048
      result = memory(stage, params, (1, ARGS.frames, h, w, 3), t)
      rows.append((name, 4 * h, 4 * w, result))
      print(f'{name:11s} output {4 * h}x{4 * w}: peak {result["peak"] / GIB:7.2f} GiB '
            f'(params/arguments {result["arguments"] / GIB:.2f}, outputs '
            f'{result["outputs"] / GIB:.2f}, temporaries {result["temporaries"] / GIB:.2f})',
            flush=True)
    base = rows[0][3]
    for name, _, _, result in rows[1:]:
      print(f'{name:11s} vs 1x: peak {result["peak"] / base["peak"]:.2f}x, temporaries '
            f'{result["temporaries"] / base["temporaries"]:.2f}x')
    print(f'machine: {jax.devices()[0].device_kind}; size={ARGS.size}, frames={ARGS.frames}, '
          f'tile={tile}, overlap={stage.options.tile_overlap}, steps={ARGS.steps}')


if __name__ == '__main__':
  main()

"""Real video data: decode throughput, worker memory, cache size, cached vs pixel train steps.

Writes synthetic H.264 videos (moving noise, 16:9) into a temp folder, then:

  decode   clips/s of `VideoClipSource` (PyAV, seek + stride + cover crop) in one
           process, vs imageio decoding every frame of the file up to the clip
           (the old folder ingestion's reader), and the pipeline with
           `--workers` grain workers vs none;
  memory   peak RSS of a fresh process decoding the last clip of a 2,000-frame
           video vs of a 100-frame one (bounded: ~1x), and imageio's whole-file
           read of the long one for contrast;
  bytes    one cache record (float16 posterior + CLIP context) at the paper's
           text-to-video size (16 x 320 x 512, SD latents 4 x 40 x 64, 77 x 768)
           vs the decoded clip (uint8 frames);
  steps    text_video train steps/s (and compiled FLOPs) from pixels vs from the
           cached entries, widths SD's / 8, at `--frame_size` (`step_figures`).

  python bench/video_data.py [--repeats=3] [--workers=2] [--frame_size=64,128]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--repeats', type=int, default=3)
PARSER.add_argument('--workers', type=int, default=2)
PARSER.add_argument('--clips', type=int, default=24, help='clips per decode measurement')
PARSER.add_argument('--frame_size', default='128,256', help='h,w of the steps comparison')
PARSER.add_argument('--steps', type=int, default=6)
ARGS = PARSER.parse_args()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import numpy as np

from videoldm import config_utils
from videoldm.data import data_config as data_config_lib
from videoldm.data import latent_cache
from videoldm.data import pipeline
from videoldm.data import video_index
from videoldm.data import video_io
from videoldm.data import video_source
# pylint: enable=g-import-not-at-top,wrong-import-position

NUM_FRAMES, STRIDE, HEIGHT, WIDTH = 16, 2, 320, 512  # The paper's text-to-video clips.


def write_videos(folder: str, count: int, frames: int, height: int, width: int) -> None:
  rng = np.random.default_rng(0)
  for i in range(count):
    base = rng.integers(0, 256, (1, height, width, 3))
    video = np.concatenate([np.roll(base, 4 * f, axis=2) for f in range(frames)])
    video_io.write_video(os.path.join(folder, f'v{i:02d}.mp4'), video.astype(np.uint8), 24.0)
  with open(os.path.join(folder, 'captions.json'), 'w', encoding='utf-8') as file:
    json.dump({f'v{i:02d}.mp4': f'moving noise number {i}' for i in range(count)}, file)


def clips_per_second(fn, count: int) -> float:
  start = time.perf_counter()
  for k in range(count):
    fn(k)
  return count / (time.perf_counter() - start)


def decode_figures(folder: str) -> dict:
  index = video_index.build_index(folder, 'train', NUM_FRAMES, STRIDE, 0,
                                  os.path.join(folder, 'index'))
  source = video_source.VideoClipSource(index, NUM_FRAMES, STRIDE, HEIGHT, WIDTH)
  order = np.random.default_rng(1).permutation(len(index))[:ARGS.clips]

  def reference(k):  # Every frame up to the clip's end, as the folder ingestion read them.
    clip = int(order[k])
    path, start = index.paths[index.files[clip]], int(index.starts[clip])
    frames = []
    for i, frame in enumerate(video_io.iter_frames(path)):
      if i >= start and (i - start) % STRIDE == 0:
        frames.append(video_io.resize_cover_crop(frame, HEIGHT, WIDTH))
      if len(frames) == NUM_FRAMES:
        return np.stack(frames)

  ours, theirs = [], []
  for _ in range(ARGS.repeats):
    ours.append(clips_per_second(lambda k: source[int(order[k])], ARGS.clips))
    theirs.append(clips_per_second(reference, ARGS.clips))
  config = data_config_lib.default_data_config()
  config.update(dict(name='videos', source=folder, index_dir=os.path.join(folder, 'index'),
                     num_frames=NUM_FRAMES, frame_stride=STRIDE, image_size=HEIGHT,
                     image_width=WIDTH))
  pipelines = {}
  for workers in (0, ARGS.workers):
    config.num_workers = workers
    iterator = pipeline.make_dataset(config, 'train', 4, seed=0)
    next(iterator)  # Workers started.
    batches = ARGS.clips // 4
    start = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    pipelines[workers] = batches * 4 / (time.perf_counter() - start)
  return dict(ours=common.median(ours), imageio=common.median(theirs), pipelines=pipelines)


PEAK_RSS = '''
import sys
from videoldm.data import video_decode, video_io
path, mode, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == 'ours':
  video_decode.decode_clip(path, frames - 31, 16, 2, 320, 512)
elif mode == 'imageio':
  video_io.read_video(path)
# VmHWM (KiB) is this program's own peak; ru_maxrss would carry the parent's across exec.
print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])
'''


def peak_rss_kib(path: str, mode: str, frames: int) -> int:
  result = subprocess.run([sys.executable, '-c', PEAK_RSS, path, mode, str(frames)],
                          check=True, capture_output=True, text=True, cwd=common.REPO)
  return int(result.stdout.split()[-1])


def memory_figures(folder: str) -> dict:
  sizes = {}
  for frames in (100, 2000):
    path = os.path.join(folder, f'long{frames}.mp4')
    rng = np.random.default_rng(frames)
    base = rng.integers(0, 256, (1, 180, 320, 3)).astype(np.uint8)
    video_io.write_video(path, np.concatenate([np.roll(base, f, axis=2) for f in range(frames)]),
                         24.0)
    sizes[frames] = path
  base = peak_rss_kib(sizes[100], 'none', 100)
  ours = {frames: peak_rss_kib(path, 'ours', frames) - base for frames, path in sizes.items()}
  whole = peak_rss_kib(sizes[2000], 'imageio', 2000) - base
  return dict(ours_short=ours[100], ours_long=ours[2000], imageio_long=whole)


def bytes_figures() -> dict:
  rng = np.random.default_rng(0)
  record = dict(latent_mean=rng.normal(size=(16, 40, 64, 4)).astype(np.float16),
                latent_logvar=rng.normal(size=(16, 40, 64, 4)).astype(np.float16),
                text_context=rng.normal(size=(77, 768)).astype(np.float16),
                fps=12.0, frame_stride=2, caption_text='a bear walking in the snow' * 2)
  return dict(record=len(latent_cache.serialize(record)), clip=NUM_FRAMES * HEIGHT * WIDTH * 3)


def step_figures(root: str) -> dict:
  """Train steps/s (and compiled FLOPs) of text_video from pixels vs from cached entries.

  The tiny SD folder gives the tokenizer and layer layout; the VAE and U-Net widths
  are SD's divided by 8 (VAE 16-32-64-64 with SD's factor-8 downsampling, U-Net
  40-80) with the paper size's (3, 1, 1) temporal convs, so the frozen encoders' share of
  a step is SD-like at CPU size. The cached batch is the stage's `cache_entries`, what
  `python -m videoldm.cache` stores.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from videoldm import stages  # pylint: disable=g-import-not-at-top
  from videoldm.convert import tiny_sd  # pylint: disable=g-import-not-at-top
  from videoldm.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from videoldm.train import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
  height, width = (int(x) for x in ARGS.frame_size.split(','))
  sd_path = tiny_sd.write_tiny_sd(os.path.join(root, 'sd'))
  config = config_utils.load_config(f'{common.REPO}/configs/sd_video.py:runlocal,sd_path={sd_path}')
  config = config_utils.override(config, **{
      'model.autoencoder.block_out_channels': (16, 32, 64, 64),
      'model.autoencoder.layers_per_block': 2, 'model.unet.block_out_channels': (40, 80),
      'model.unet.temporal.conv_kernel_size': (3, 1, 1),  # The paper size's, not runlocal's.
      'model.frame_size': (height, width), 'data.image_size': height,
      'data.image_width': width, 'data.num_frames': 8, 'batch_size': 2, 'init_from': None})
  stage = stages.get_stage(config.stage)(config)
  mesh = sharding_lib.make_mesh(config.mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  pixels = dict(video=rng.uniform(-1, 1, (2, 8, height, width, 3)).astype(np.float32),
                caption=stage.tokenize(['a bear walking', 'a red car']),
                fps=np.full((2,), 12.0, np.float32), frame_stride=np.full((2,), 2, np.int32))
  pixels = pipeline.global_batch_to_device(pixels, batch_sharding)
  key = jax.random.key(0)
  planned = train_step_lib.plan_train_state(stage, config, mesh, pixels, key)
  state = train_step_lib.create_train_state(stage, config, mesh, pixels, key, planned=planned)[0]
  entries = jax.jit(stage.cache_entries)(state.params, pixels)
  cached = {**{k: v.astype(jax.numpy.float16).astype(jax.numpy.float32)
               for k, v in entries.items()},
            'fps': pixels['fps'], 'frame_stride': pixels['frame_stride']}
  batches = {'pixels': pixels, 'cache': pipeline.global_batch_to_device(
      jax.device_get(cached), batch_sharding)}
  _, state_sharding, labels, tx = planned
  step = train_step_lib.make_train_step(stage, config, labels, tx, state_sharding,
                                        batch_sharding, key)
  flops = {name: common.compiled_flops(step.lower(state, batch).compile())
           for name, batch in batches.items()}
  states = {name: train_step_lib.create_train_state(stage, config, mesh, pixels, key,
                                                    planned=planned)[0] for name in batches}

  def run(name):
    def go():
      states[name], metrics = step(states[name], batches[name])
      return metrics
    return go

  times = common.interleaved({name: run(name) for name in batches}, ARGS.steps)
  return {'steps': {name: 1.0 / common.median(values) for name, values in times.items()},
          'flops': flops}


def gflops() -> float:
  fn, flops = common.matmul_chain()
  return flops / common.median(common.interleaved({'mm': fn}, 5)['mm']) / 1e9


def main():
  flags.FLAGS.mark_as_parsed()  # grain workers read absl flags.
  logging.set_verbosity(logging.WARNING)
  with tempfile.TemporaryDirectory() as root:
    folder = os.path.join(root, 'videos')
    os.makedirs(folder)
    write_videos(folder, 8, 150, 360, 640)  # 4 clips each.
    decode = decode_figures(folder)
    memory = memory_figures(root)
    size = bytes_figures()
    steps = step_figures(root)
  pipes, workers = decode['pipelines'], ARGS.workers
  rows = [
      ('decode 16 x 320x512 clips (stride 2) from 640x360 H.264: ours vs imageio',
       f'{decode["ours"]:.2f} vs {decode["imageio"]:.2f} clips/s',
       f'{decode["ours"] / decode["imageio"]:.2f}x'),
      (f'pipeline clips/s: {workers} grain workers vs none',
       f'{pipes[workers]:.2f} vs {pipes[0]:.2f}', f'{pipes[workers] / pipes[0]:.2f}x'),
      ('peak RSS decoding the last clip: 2,000-frame vs 100-frame video',
       f'{memory["ours_long"] / 1024:.0f} vs {memory["ours_short"] / 1024:.0f} MiB above the '
       f'imports (imageio whole read: {memory["imageio_long"] / 1024:.0f} MiB)',
       f'{memory["ours_long"] / max(memory["ours_short"], 1):.2f}x'),
      ('bytes per clip: decoded clip vs cache record (float16)',
       f'{size["clip"]:,} vs {size["record"]:,}', f'{size["clip"] / size["record"]:.1f}x'),
      (f'text_video train steps/s, 8 x {ARGS.frame_size}: cache vs pixels (target >= 1.5x)',
       f'{steps["steps"]["cache"]:.2f} vs {steps["steps"]["pixels"]:.2f}',
       f'{steps["steps"]["cache"] / steps["steps"]["pixels"]:.2f}x'),
      ('same, compiled step FLOPs: pixels vs cache',
       f'{steps["flops"]["pixels"] / 1e9:.1f} vs {steps["flops"]["cache"] / 1e9:.1f} GFLOP',
       f'{steps["flops"]["pixels"] / steps["flops"]["cache"]:.2f}x'),
  ]
  common.report('Real video data', ('figure', 'values', 'ratio'), rows,
                notes=[f'f32 matmul: {gflops():.0f} GFLOP/s'])


if __name__ == '__main__':
  main()

"""Sampling on one JAX device vs the videos split over one device per core.

Loads a trained run (the quickstart's, by default) and generates the same
video with the whole stack (key frames, interpolation, temporal decoder, x4
upsampler) twice per device set: once to compile every step (a short video
uses the same compiled windows), then the timed full video. The CPU is split
into one device per core first (`videoldm.host_devices`), as the quickstart
and the sample CLI do; a GPU has one device and nothing to compare.

  python bench/sample_devices.py [--run=/tmp/videoldm_quickstart] [--num_frames=61]
"""

import argparse
import itertools
import time

import common  # pylint: disable=unused-import  # Puts the repo on sys.path.
from videoldm import host_devices

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--run', default='/tmp/videoldm_quickstart')
PARSER.add_argument('--num_frames', type=int, default=61)
PARSER.add_argument('--labels', default='3,7')
ARGS = PARSER.parse_args()


def main():
  host_devices.keep_freed_memory()
  host_devices.use_one_device_per_core()
  import jax  # pylint: disable=import-outside-toplevel
  from videoldm.pipelines import loading  # pylint: disable=import-outside-toplevel
  from videoldm.pipelines import video_ldm  # pylint: disable=import-outside-toplevel

  models = loading.load_run(ARGS.run)
  labels = tuple(int(label) for label in ARGS.labels.split(','))
  settings = video_ldm.Settings(num_frames=ARGS.num_frames, labels=labels,
                                upsample='upsampler' in models)
  seconds = {}
  for devices in (jax.devices()[:1], jax.devices()):
    pipeline = video_ldm.VideoLDM(models, settings, devices=devices)
    for frame in itertools.islice(pipeline.frames(), 9):  # Compiles every step.
      jax.block_until_ready(frame)
    start = time.perf_counter()
    for frame in pipeline.frames():
      jax.block_until_ready(frame)
    seconds[len(devices)] = time.perf_counter() - start
  many = len(jax.devices())
  rows = [[count, f'{value:.1f} s', f'{seconds[1] / value:.2f}x'] for count, value in
          seconds.items()]
  common.report(f'Sampling {ARGS.num_frames} frames x {len(labels)} videos ({ARGS.run}), '
                f'{many} devices vs 1', ['devices', 'time', 'speed-up'], rows)


if __name__ == '__main__':
  main()

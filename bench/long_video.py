"""Figure 6: peak memory and time of long videos through `VideoLDM`.

Stages `image`, `video`, `interpolation`, `decoder` (runlocal configs, random
params, 2 DDIM steps): key frames -> one interpolation pass -> temporal decoder.
Each length runs in a fresh subprocess: it first generates one window's worth
of frames with the same `VideoLDM` (compiling every step), resets the peak-RSS counter
(`/proc/self/clear_refs`), then generates and discards the full video,
reporting the peak RSS (VmHWM) and the wall time of that run. 1x is 4
key-frame windows; 8x is 32. Time is judged by a least-squares line through
the (frames, time) points: each length's deviation from it, and its intercept
(the fixed cost of one video: the first frame, the padded last calls).

  python bench/long_video.py [--multiples=1,2,4,8] [--repeats=2]
"""

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

import common

PARSER = argparse.ArgumentParser()
PARSER.add_argument('--multiples', default='1,2,4,8')
PARSER.add_argument('--windows', type=int, default=4, help='key-frame windows at 1x')
PARSER.add_argument('--repeats', type=int, default=2, help='subprocesses per length')
PARSER.add_argument('--child', type=int, default=0, help='(internal) multiple to run')
ARGS = PARSER.parse_args()


def rss_high_water_kib() -> int:
  with open('/proc/self/status') as f:
    return int(re.search(r'VmHWM:\s+(\d+)', f.read()).group(1))


def num_frames(windows: int, window: int = 8) -> int:
  """Frames after one T -> 4T pass of the key frames `windows` windows give."""
  keys = window + (windows - 1) * (window - 2)
  return (keys - 1) * 4 + 1


def child(multiple: int) -> dict:
  sys.path.insert(0, common.TESTS)
  import jax  # pylint: disable=import-outside-toplevel
  import stage_helpers  # pylint: disable=import-outside-toplevel
  from videoldm.pipelines import video_ldm  # pylint: disable=import-outside-toplevel
  models = {name: stage_helpers.load_stage(name)
            for name in ('image', 'video', 'interpolation', 'decoder')}

  frames = num_frames(ARGS.windows * multiple)
  pipeline = video_ldm.VideoLDM(models, video_ldm.Settings(num_frames=frames, labels=(3, 7)))

  def run(limit: int) -> int:
    count = 0
    for frame in itertools.islice(pipeline.frames(), limit):
      jax.block_until_ready(frame)
      count += 1
    return count

  run(num_frames(2))  # Compiles every step (first and later windows) of this pipeline.
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # Resets VmHWM to the current RSS.
  baseline = rss_high_water_kib()
  start = time.perf_counter()
  count = run(frames)
  seconds = time.perf_counter() - start
  return dict(frames=count, seconds=seconds, peak_kib=rss_high_water_kib(),
              baseline_kib=baseline)


def main():
  if ARGS.child:
    print('RESULT ' + json.dumps(child(ARGS.child)))
    return
  multiples = [int(m) for m in ARGS.multiples.split(',')]
  results = {m: [] for m in multiples}
  for _ in range(ARGS.repeats):
    for m in multiples:  # Interleaved over lengths.
      out = subprocess.run([sys.executable, os.path.abspath(__file__), f'--child={m}',
                            f'--windows={ARGS.windows}'], capture_output=True, text=True,
                           check=True).stdout
      results[m].append(json.loads(out.split('RESULT ', 1)[1]))
  base = results[multiples[0]]
  base_peak = min(r['peak_kib'] for r in base)
  base_time = common.median([r['seconds'] for r in base])
  # Linearity: least-squares fit time = fixed + per_frame * frames over the lengths.
  frames = np.array([results[m][0]['frames'] for m in multiples], np.float64)
  times = np.array([common.median([r['seconds'] for r in results[m]]) for m in multiples])
  per_frame, fixed = np.polyfit(frames, times, 1)
  fitted = fixed + per_frame * frames
  rows = []
  for i, m in enumerate(multiples):
    runs = results[m]
    peak = min(r['peak_kib'] for r in runs)
    rows.append([f'{m}x', runs[0]['frames'], f'{peak / 1024:.0f} MiB',
                 f'{peak / base_peak:.3f}x', f'{times[i]:.1f} s',
                 f'{times[i] / base_time / (m / multiples[0]):.2f}',
                 f'{100 * (times[i] - fitted[i]) / fitted[i]:+.1f}%',
                 f'{max(r["peak_kib"] - r["baseline_kib"] for r in runs) / 1024:.0f} MiB'])
  common.report('Figure 6: long video (streaming)',
                ['length', 'frames', 'peak RSS', 'peak / 1x', 'time', 'time / (k x 1x time)',
                 'off the linear fit', 'growth over warm RSS'], rows,
                [f'2 videos, runlocal stages with random params, 2 DDIM steps, 1 interpolation '
                 f'pass, temporal decoder; fresh process per run, {ARGS.repeats} runs per '
                 'length (peak: smallest, time: median)',
                 f'linear fit: time = {fixed:.2f} s + {1e3 * per_frame:.1f} ms x frames; largest '
                 f'deviation {100 * np.max(np.abs(times - fitted) / fitted):.1f}%'])


if __name__ == '__main__':
  main()

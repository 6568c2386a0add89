"""The sampling stack split over two CPU devices gives the frames of one device.

This file is also the subprocess driver (`python tests/test_pipeline_sharded.py`):
the device count is fixed when JAX starts, so the two-device run needs its own process.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('image', 'video', 'interpolation', 'decoder', 'upsampler')


def compare_one_and_two_devices() -> None:
  """Samples the whole stack on 1 and on 2 devices; raises if the frames differ."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from videoldm.pipelines import video_ldm  # pylint: disable=import-outside-toplevel
  from stage_helpers import load_stage  # pylint: disable=import-outside-toplevel

  assert jax.device_count() == 2, jax.devices()
  models = {name: load_stage(name) for name in STAGES}
  settings = video_ldm.Settings(num_frames=9, labels=(3, 7), upsample=True, eta=1.0)
  runs = {}
  for count in (1, 2):
    pipeline = video_ldm.VideoLDM(models, settings, devices=jax.devices()[:count])
    assert (pipeline.mesh is None) == (count == 1)
    frames = list(pipeline.frames())
    if count == 2:  # Each device holds one of the two videos.
      assert len(frames[-1].sharding.device_set) == 2, frames[-1].sharding
    runs[count] = np.stack([np.asarray(frame) for frame in frames])
  assert runs[1].shape == (9, 2, 128, 128, 3), runs[1].shape
  np.testing.assert_allclose(runs[2], runs[1], atol=1e-4)
  assert video_ldm.batch_mesh(3, jax.devices()) is None  # 3 videos do not split over 2.


def test_two_devices_give_the_frames_of_one():
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=os.pathsep.join([os.path.join(REPO, 'tests'), REPO]))
  result = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'frames match' in result.stdout


if __name__ == '__main__':
  compare_one_and_two_devices()
  print('frames match')

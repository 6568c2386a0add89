"""Test-wide settings (CPU only, quiet TensorFlow, float32 matmuls) and shared run fixtures."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')
import pytest  # noqa: E402


@pytest.fixture(scope='module')
def sd_run():
  """The tiny Stable-Diffusion-to-video run (`sd_video_helpers.tiny_run`), once per process."""
  import sd_video_helpers  # pylint: disable=g-import-not-at-top
  return sd_video_helpers.tiny_run()


@pytest.fixture(scope='module')
def sd_model(sd_run):
  """The text_video stage of `sd_run` with its inference (EMA) params."""
  from videoldm.pipelines import loading  # pylint: disable=g-import-not-at-top
  return loading.load_stage(os.path.join(sd_run.run_dir, 'video'))

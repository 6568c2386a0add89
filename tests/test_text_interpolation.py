"""Text interpolation (Sec. 3.3 with text): trained from the key-frame run, sampled in text mode.

Uses the tiny Stable-Diffusion-to-video run (tests/sd_video_helpers.py) and a few
steps of `text_interpolation` started from it.
"""

import itertools
import os

import jax
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm.models import params
from videoldm.pipelines import loading
from videoldm.pipelines import video_ldm
from videoldm.stages import interpolation

import sd_video_helpers

PROMPTS = ('a 3', 'a 7 moving')


@pytest.fixture(scope='module')
def models(sd_model):
  run_dir = sd_video_helpers.tiny_interpolation_run()
  return {'video': sd_model, 'interpolation': loading.load_stage(
      os.path.join(run_dir, 'interpolation'))}


def test_only_temporal_params_change_from_the_key_frame_run(models):
  video, interp = (checkpoints.flat_params(models[name].params)
                   for name in ('video', 'interpolation'))
  changed = [path for path in video if not np.array_equal(video[path], interp[path])]
  assert changed and all(params.is_temporal(path) for path in changed), changed[:3]
  new = sorted(set(interp) - set(video))
  assert new and all('regime' in path for path in new), new  # The regime inputs only.


def test_text_mode_interpolates_and_keeps_every_key_frame(models):
  settings = video_ldm.Settings(prompts=PROMPTS, num_frames=9, interpolation_passes=1,
                                window_frames=4, num_steps=2, seed=1)
  pipe = video_ldm.VideoLDM(models, settings)
  key = jax.random.key(0)
  dense = list(pipe.latents(key))
  assert len(dense) == 9 and dense[0].shape[0] == 2
  key_key, _ = jax.random.split(key)
  keys = list(itertools.islice(pipe.key_frame_latents(key_key), 3))
  for i, frame in enumerate(keys):  # T -> 4T keeps the key frames exactly.
    np.testing.assert_array_equal(dense[i * interpolation.UPSAMPLING], frame)
  assert np.max(np.abs(np.asarray(dense[1]) - np.asarray(dense[0]))) > 1e-4  # New frames.


def test_text_interpolation_needs_regime_and_context_frames(models):
  config = config_utils.override(models['interpolation'].stage.config,
                                 **{'model.unet.temporal.regime_conditioning': False})
  with pytest.raises(ValueError, match='needs model.unet.temporal.regime_conditioning=True'):
    type(models['interpolation'].stage)(config)


def test_the_safetensors_export_holds_both_text_stages(models, tmp_path):
  from videoldm import export  # pylint: disable=g-import-not-at-top
  from videoldm.pipelines import exported  # pylint: disable=g-import-not-at-top
  run_dir = sd_video_helpers.tiny_interpolation_run()
  out = export.export(run_dir, 'safetensors', str(tmp_path / 'x'))
  loaded = exported.load_exported(out, ('video', 'interpolation'), required=('video',
                                                                             'interpolation'))
  for name, model in models.items():
    assert type(loaded[name].stage) is type(model.stage)
    want, got = (checkpoints.flat_params(m.params) for m in (model, loaded[name]))
    assert sorted(got) == sorted(want)
    for path, value in want.items():
      np.testing.assert_array_equal(got[path], value, err_msg=path)

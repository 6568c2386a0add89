"""`python -m videoldm.export`: safetensors, diffusers and StableHLO exports of a text run."""

import json
import os

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch

from videoldm import checkpoints
from videoldm import export
from videoldm.models import unet as unet_lib
from videoldm.pipelines import exported
from videoldm.pipelines import generate
from videoldm.pipelines import loading
from videoldm.pipelines import video_ldm


def test_safetensors_export_reloads_identical_params_and_samples(sd_run, sd_model, tmp_path):
  out = export.export(sd_run.run_dir, 'safetensors', str(tmp_path / 'export'))
  assert json.load(open(os.path.join(out, exported.MANIFEST)))['stages'] == ['video']
  models = loading.load_run(out, required=('video',))
  flat = checkpoints.flat_params(models['video'].params)
  expected = checkpoints.flat_params(sd_model.params)
  assert set(flat) == set(expected)
  for path, value in expected.items():
    np.testing.assert_array_equal(flat[path], value, err_msg=path)
  # EMA: the exported temporal params are the EMA ones, which differ from the raw params.
  assert sd_run.config.ema_decay is not None
  raw = checkpoints.flat_params(
      loading.load_stage(os.path.join(sd_run.run_dir, 'video'), use_ema=False).params)
  assert any(np.any(raw[p] != flat[p]) for p in flat if 'temporal' in p)
  # The tokenizer travels with the export; the sample CLI's generate() runs from it alone.
  assert models['video'].stage.config.model.tokenizer_path == os.path.join(out, 'tokenizer')
  settings = video_ldm.Settings(num_frames=4, prompts=('a 3 moving left',),
                                interpolation_passes=0, num_steps=1)
  count = generate.generate(out, settings, str(tmp_path / 'video.mp4'), fps=4.0,
                            spatial_from=sd_run.sd_path)
  assert count == 4 and os.path.getsize(tmp_path / 'video.mp4') > 0


def test_diffusers_export_loads_in_diffusers_with_the_same_unet_output(sd_run, sd_model, tmp_path):
  out = export.export(os.path.join(sd_run.run_dir, 'video'), 'diffusers', str(tmp_path / 'hf'))
  # Frozen spatial layers: the round trip gives back the SD folder's tensors exactly.
  for sub, stem in (('vae', 'diffusion_pytorch_model'), ('text_encoder', 'model'),
                    ('unet', 'diffusion_pytorch_model')):
    ours = safetensors.numpy.load_file(os.path.join(out, sub, f'{stem}.safetensors'))
    original = safetensors.numpy.load_file(os.path.join(sd_run.sd_path, sub, f'{stem}.safetensors'))
    strip = lambda k: k.removeprefix('text_model.')
    assert {strip(k) for k in ours} == {strip(k) for k in original}, sub
    original = {strip(k): v for k, v in original.items()}
    for name, value in ours.items():
      np.testing.assert_array_equal(value, original[strip(name)], err_msg=name)
  torch_unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(out, 'unet')).eval()
  diffusers.AutoencoderKL.from_pretrained(os.path.join(out, 'vae'))
  image_config, spatial = export.spatial_unet(sd_model.stage.config.model.unet,
                                              sd_model.params['unet'])
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 16, 4)).astype(np.float32)
  context = rng.standard_normal((2, 12, 32)).astype(np.float32)
  t = np.array([10, 700])
  ours = unet_lib.UNet(image_config).apply({'params': spatial}, x, t, context)
  with torch.no_grad():
    theirs = torch_unet(torch.from_numpy(np.moveaxis(x, -1, 1)), torch.from_numpy(t),
                        encoder_hidden_states=torch.from_numpy(context)).sample.numpy()
  theirs = np.moveaxis(theirs, 1, -1)
  assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-4


def test_stablehlo_export_matches_the_live_model(sd_run, sd_model, tmp_path):
  out = export.export(sd_run.run_dir, 'stablehlo', str(tmp_path / 'hlo'), num_frames=4,
                      latent_size=(8, 16))
  loaded = exported.load_stablehlo(out)
  assert loaded.signature['sampler']['context_latents']['shape'] == [1, 4, 8, 16, 4]
  stage = sd_model.stage
  context = jax.random.normal(jax.random.key(0), (1, 4, 8, 16, 4))
  mask = jnp.array([[1.0, 0.0, 0.0, 0.0]])
  ids = jnp.asarray(stage.tokenize(['a 3 moving left']))
  key = jax.random.key(5)
  options = stage.sampling_options()
  live = jax.jit(lambda *args: stage.sample_window(*args, options))(sd_model.params, context, mask,
                                                                   ids, key)
  served = loaded.sample(context, mask, ids, jax.random.key_data(key))
  np.testing.assert_allclose(served, live, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(served[:, 0], context[:, 0])  # The context frame is kept.
  text = stage.encode_text(sd_model.params, ids)
  t = jnp.array([400], jnp.int32)
  np.testing.assert_allclose(loaded.denoise(context, t, text, context, mask),
                             jax.jit(stage.apply_unet)(sd_model.params, context, t, text, context,
                                                       mask), rtol=1e-5, atol=1e-5)


def test_bad_export_requests_raise(sd_run, tmp_path):
  with pytest.raises(ValueError, match="--format='onnx' is not one of"):
    export.export(sd_run.run_dir, 'onnx', str(tmp_path / 'x'))
  with pytest.raises(ValueError, match="--stage='image' is not among the exported stages"):
    export.export(sd_run.run_dir, 'diffusers', str(tmp_path / 'x'), stage='image')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    export.export(str(tmp_path / 'nowhere'), 'safetensors', str(tmp_path / 'x'))

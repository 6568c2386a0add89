"""One tiny SD folder and one short `configs/sd_video.py:runlocal` run per test session.

`tiny_run()` writes the tiny random SD pipeline folder, converts it into the
`init_from` params file, and trains the text-to-video temporal layers for a
few steps on captioned `moving_digits` (in a private TFDS data_dir); the
result is cached, so test_sd_video.py and test_export.py share it.
"""

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile

from videoldm import config_utils
from videoldm.convert import temporal_transfer
from videoldm.convert import tiny_sd
from videoldm.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def tiny_clip_dir() -> str:
  """A tiny random transformers CLIPModel folder (with its processor) on the tiny vocabulary."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  path = tempfile.mkdtemp(prefix='tiny_clip_')
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  tiny_sd.write_tokenizer(path)
  vocab = len(tiny_sd.tokenizer_vocab())
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=4,
                       max_position_embeddings=tiny_sd.MAX_LENGTH, bos_token_id=vocab - 2,
                       eos_token_id=vocab - 1, pad_token_id=vocab - 1),
      vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, image_size=32, patch_size=8),
      projection_dim=16)
  torch.manual_seed(0)
  transformers.CLIPModel(config).eval().save_pretrained(path)
  tokenizer = transformers.CLIPTokenizer(f'{path}/vocab.json', f'{path}/merges.txt',
                                         model_max_length=tiny_sd.MAX_LENGTH)
  images = transformers.CLIPImageProcessor(size={'shortest_edge': 32},
                                           crop_size={'height': 32, 'width': 32})
  transformers.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
  return path


@dataclasses.dataclass(frozen=True)
class TinyRun:
  root: str
  sd_path: str
  run_dir: str  # A run folder: `<run_dir>/video` is the text_video workdir.
  config: object


def tiny_config(sd_path: str, data_dir: str, **overrides):
  config = config_utils.load_config(
      os.path.join(REPO, 'configs', f'sd_video.py:runlocal,sd_path={sd_path}'))
  return config_utils.override(config, **{'data.data_dir': data_dir, **overrides})


@functools.cache
def tiny_run() -> TinyRun:
  root = tempfile.mkdtemp(prefix='sd_video_')
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  sd_path = tiny_sd.write_tiny_sd(os.path.join(root, 'sd'))
  temporal_transfer.convert_sd_pipeline(
      sd_path, os.path.join(sd_path, 'videoldm_params.safetensors'))
  config = tiny_config(sd_path, os.path.join(root, 'tfds'))
  run_dir = os.path.join(root, 'run')
  trainer.train_and_evaluate(config, os.path.join(run_dir, 'video'))
  return TinyRun(root, sd_path, run_dir, config)


@functools.cache
def tiny_interpolation_run() -> str:
  """A copy of `tiny_run()`'s key-frame stage plus a few steps of `text_interpolation` from
  it; the run folder (with `video/` and `interpolation/`). A copy, so the tests of
  `tiny_run()`'s folder see only its `video/` whatever ran before them."""
  run = tiny_run()
  run_dir = os.path.join(run.root, 'chain_run')
  shutil.copytree(os.path.join(run.run_dir, 'video'), os.path.join(run_dir, 'video'))
  config = config_utils.override(
      config_utils.load_config(os.path.join(
          REPO, 'configs', f'sd_video.py:runlocal,stage=text_interpolation,sd_path={run.sd_path}')),
      **{'data.data_dir': os.path.join(run.root, 'tfds'),
         'init_from.workdir': os.path.join(run_dir, 'video'), 'total_steps': 2})
  trainer.train_and_evaluate(config, os.path.join(run_dir, 'interpolation'))
  return run_dir


@functools.cache
def tiny_upscaler() -> str:
  """The tiny random x4 upscaler folder, converted into its `init_from` params file."""
  root = tempfile.mkdtemp(prefix='sd_upscaler_')
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  path = tiny_sd.write_tiny_upscaler(os.path.join(root, 'upscaler'))
  temporal_transfer.convert_sd_pipeline(path, os.path.join(path, 'videoldm_params.safetensors'))
  return path


def chain_arg() -> str:
  """The `configs/sd_video.py` argument of the tiny text stack."""
  return f'runlocal,sd_path={tiny_run().sd_path},upscaler_path={tiny_upscaler()}'


@functools.cache
def tiny_chain_run() -> str:
  """`tiny_interpolation_run()` completed by `chain.train_all` with the text stack's
  `text_decoder` and `text_upsampler`; the run folder (video, interpolation, decoder,
  upsampler)."""
  from videoldm.train import chain  # pylint: disable=g-import-not-at-top
  run_dir = tiny_interpolation_run()
  chain.train_all(run_dir, os.path.join(REPO, 'configs', 'sd_video.py'), chain_arg(),
                  stages=('text_decoder', 'text_upsampler'))
  return run_dir

"""Tests for videoldm.data: the moving_digits builder and the grain input pipeline over TFDS."""

import json
import re

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from videoldm.data import data_config
from videoldm.data import moving_digits
from videoldm.data import pipeline

tfds.disable_progress_bar()

TINY = dict(num_frames=8, image_size=32, num_digits=2, num_train=64, num_test=32)
DIRECTION_WORDS = {name for name, _ in moving_digits.DIRECTIONS} | {
    'horizontally', 'vertically', 'diagonally'}


def _prepare(data_dir, name='moving_digits', **kwargs):
  builder = tfds.builder(name, data_dir=str(data_dir),
                         file_format='array_record', **kwargs)
  builder.download_and_prepare()
  return builder


def _records(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def digits_dirs(tmp_path_factory):
  """The tiny moving_digits generated twice, into two separate data_dirs."""
  dirs = [tmp_path_factory.mktemp(f'digits{i}') for i in range(2)]
  builders = [_prepare(d, config='tiny') for d in dirs]
  return dirs, builders


def _data_config(data_dir, **overrides):
  config = data_config.default_data_config()
  config.builder_config = 'tiny'
  config.data_dir = str(data_dir)
  config.num_frames = 4
  config.frame_stride = 2
  for key, value in overrides.items():
    config[key] = value
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ----------------------------------------------------------------- moving_digits


def test_moving_digits_shapes_dtypes_and_sizes(digits_dirs):
  _, (builder, _) = digits_dirs
  assert builder.info.splits['train'].num_examples == TINY['num_train']
  assert builder.info.splits['test'].num_examples == TINY['num_test']
  example = builder.as_data_source(split='train')[0]
  f, s = TINY['num_frames'], TINY['image_size']
  assert example['video'].shape == (f, s, s, 3)
  assert example['video'].dtype == np.uint8
  assert example['labels'].shape == (TINY['num_digits'],)
  assert example['fps'] == pytest.approx(8.0)
  assert example['video'].max() > 200  # Digits are drawn, not a blank canvas.


def test_moving_digits_captions_name_the_labels(digits_dirs):
  _, (builder, _) = digits_dirs
  for split in ('train', 'test'):
    for record in _records(builder, split):
      labels = record['labels']
      assert np.all((labels >= 0) & (labels <= 9))
      caption = record['caption'].decode()
      assert [int(d) for d in re.findall(r'\b\d\b', caption)] == list(labels)
      words = re.findall(r'moving (\S+)', caption)
      assert len(words) == TINY['num_digits'] and set(words) <= DIRECTION_WORDS


def test_moving_digits_two_generations_identical(digits_dirs):
  _, builders = digits_dirs
  for split in ('train', 'test'):
    first, second = (_records(b, split) for b in builders)
    for a, b in zip(first, second, strict=True):
      assert a['video'].tobytes() == b['video'].tobytes()
      assert a['labels'].tobytes() == b['labels'].tobytes()
      assert a['caption'] == b['caption'] and a['fps'] == b['fps']


def test_moving_digits_train_and_test_differ(digits_dirs):
  _, (builder, _) = digits_dirs
  train, test = _records(builder, 'train'), _records(builder, 'test')
  train_videos = {r['video'].tobytes() for r in train}
  assert not any(r['video'].tobytes() in train_videos for r in test)
  train_glyphs, _ = moving_digits.load_glyphs('train', 8)
  test_glyphs, _ = moving_digits.load_glyphs('test', 8)
  train_keys = {g.tobytes() for g in train_glyphs}
  assert not any(g.tobytes() in train_keys for g in test_glyphs)


def _best_circular_shift(a, b, max_shift):
  """(dx, dy) maximising the overlap of roll(a, (dy, dx)) with b."""
  shifts = range(-max_shift, max_shift + 1)
  return max(((dx, dy) for dx in shifts for dy in shifts),
             key=lambda s: float(np.sum(np.roll(a, (s[1], s[0]), (0, 1)) * b)))


@pytest.mark.parametrize('bounce', [False, True])
def test_moving_digits_caption_matches_motion(bounce):
  config = moving_digits.derive_config('tiny', num_digits=1, bounce=bounce,
                                       colored=False)
  glyphs, labels = moving_digits.load_glyphs('train', 14)
  directions = {  # (sign dx, sign dy) in image coordinates: y grows down.
      'right': (1, 0), 'left': (-1, 0), 'up': (0, -1), 'down': (0, 1),
      'up-right': (1, -1), 'up-left': (-1, -1), 'down-right': (1, 1),
      'down-left': (-1, 1)}
  for i in range(12):
    example = moving_digits.make_example(
        config, glyphs, labels, np.random.default_rng((7, i)))
    alpha = example['video'].max(axis=-1).astype(np.float64)  # (f, h, w)
    word = re.search(r'moving (\S+)', example['caption']).group(1)
    if not bounce:  # Wrapping: the exact compass direction holds throughout.
      for start in range(0, len(alpha) - 2, 2):
        dx, dy = _best_circular_shift(alpha[start], alpha[start + 2], 6)
        assert (np.sign(dx), np.sign(dy)) == directions[word], example['caption']
    else:  # Bouncing: the axis holds; a profile across the axis never changes.
      rows, cols = alpha.sum(axis=2), alpha.sum(axis=1)  # (f, h), (f, w)
      still_rows = np.allclose(rows, rows[:1])
      still_cols = np.allclose(cols, cols[:1])
      assert (still_rows, still_cols) == {
          'horizontally': (True, False), 'vertically': (False, True),
          'diagonally': (False, False)}[word], example['caption']


def test_moving_digits_rejects_bad_settings(tmp_path):
  with pytest.raises(ValueError, match='num_digits=3'):
    tfds.builder('moving_digits', config='tiny', num_digits=3,
                 data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="'nope'"):
    moving_digits.derive_config('nope')


# --------------------------------------------------------------------- pipeline


def test_pipeline_batch_contents(digits_dirs):
  dirs, (builder, _) = digits_dirs
  source = builder.as_data_source(split='train')
  batch = next(pipeline.make_dataset(_data_config(dirs[0]), 'train', 8, seed=1,
                                     shuffle=False))
  assert batch['video'].shape == (8, 4, 32, 32, 3)
  assert batch['video'].dtype == np.float32
  assert batch['video'].min() >= -1.0 and batch['video'].max() <= 1.0
  assert batch['labels'].dtype == np.int32
  np.testing.assert_array_equal(batch['frame_stride'], 2)
  np.testing.assert_allclose(batch['fps'], 4.0)  # 8 fps source, stride 2.
  offsets = set()
  for i in range(8):  # Unshuffled: example i is record i at some offset.
    record = source[i]
    uint8 = np.round((batch['video'][i] + 1.0) * 127.5).astype(np.uint8)
    matches = [o for o in range(2) if np.array_equal(
        uint8, record['video'][o:o + 7:2])]
    assert matches, f'example {i} is no stride-2 clip of record {i}'
    offsets.add(matches[0])
    np.testing.assert_array_equal(batch['labels'][i], record['labels'])
    assert batch['caption_text'][i] == record['caption'].decode()
  assert offsets == {0, 1}  # Offsets are random, not fixed.


def test_pipeline_resizes_when_image_size_differs(digits_dirs):
  dirs, _ = digits_dirs
  batch = next(pipeline.make_dataset(_data_config(dirs[0], image_size=16),
                                     'test', 4, seed=0))
  assert batch['video'].shape == (4, 4, 16, 16, 3)


def test_pipeline_same_seed_same_batches(digits_dirs):
  dirs, _ = digits_dirs
  config = _data_config(dirs[0])
  first = _take(pipeline.make_dataset(config, 'train', 8, seed=5), 3)
  second = _take(pipeline.make_dataset(config, 'train', 8, seed=5), 3)
  for a, b in zip(first, second):
    _assert_batches_equal(a, b)
  other = next(pipeline.make_dataset(config, 'train', 8, seed=6))
  assert not np.array_equal(other['video'], first[0]['video'])


def test_pipeline_resume_from_state(digits_dirs):
  dirs, _ = digits_dirs
  config = _data_config(dirs[0])
  uninterrupted = _take(pipeline.make_dataset(config, 'train', 8, seed=3), 11)
  interrupted = pipeline.make_dataset(config, 'train', 8, seed=3)
  _take(interrupted, 4)
  state = json.loads(json.dumps(interrupted.get_state()))
  resumed = pipeline.make_dataset(config, 'train', 8, seed=3)
  resumed.set_state(state)
  for expected, got in zip(uninterrupted[4:], _take(resumed, 7)):  # Past epoch.
    _assert_batches_equal(expected, got)


def _example_keys(batch):
  return [batch['video'][i].tobytes() + batch['labels'][i].tobytes()
          for i in range(len(batch['video']))]


def test_pipeline_process_shards_partition_global_batch(digits_dirs):
  dirs, _ = digits_dirs
  config = _data_config(dirs[0])
  make = lambda index, count: pipeline.make_dataset(
      config, 'train', 8, seed=11, process_index=index, process_count=count)
  single, shard0, shard1 = make(0, 1), make(0, 2), make(1, 2)
  for _ in range(10):  # 8 steps per epoch: crosses into the second epoch.
    global_batch = next(single)
    local0, local1 = next(shard0), next(shard1)
    assert len(local0['video']) == len(local1['video']) == 4
    keys0, keys1 = set(_example_keys(local0)), set(_example_keys(local1))
    assert not keys0 & keys1
    assert keys0 | keys1 == set(_example_keys(global_batch))


def test_pipeline_process_shards_are_blocks_of_the_global_batch(digits_dirs):
  """Process p holds the p-th contiguous block of every global batch (device order)."""
  dirs, _ = digits_dirs
  make = lambda i, n: pipeline.make_dataset(_data_config(dirs[0]), 'train', 8, seed=11,
                                            process_index=i, process_count=n)
  single, shards = make(0, 1), [make(i, 4) for i in range(4)]
  for _ in range(10):
    whole, parts = next(single), [next(s) for s in shards]
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])



def test_pipeline_finite_epochs_keep_processes_in_step(digits_dirs):
  dirs, _ = digits_dirs
  config = _data_config(dirs[0])
  for index, count in ((0, 1), (0, 2), (1, 2)):  # 63 records: 7 batches of 8.
    iterator = pipeline.make_dataset(config, 'train[:63]', 8, seed=0,
                                     num_epochs=1, process_index=index,
                                     process_count=count)
    assert len(list(iterator)) == 7


def test_pipeline_errors(digits_dirs):
  dirs, _ = digits_dirs
  config = _data_config(dirs[0])
  with pytest.raises(ValueError, match=r'(?=.*\b9\b)(?=.*\b2\b)'):
    pipeline.make_dataset(config, 'train', 9, seed=0, process_index=0,
                          process_count=2)
  with pytest.raises(ValueError, match='num_frames=8 at frame_stride=2'):
    pipeline.make_dataset(_data_config(dirs[0], num_frames=8), 'train', 8,
                          seed=0)
  with pytest.raises(ValueError, match='64 examples x 1 epochs'):
    pipeline.make_dataset(config, 'train', 128, seed=0, num_epochs=1)
  with pytest.raises(FileNotFoundError, match='prepare'):
    pipeline.make_dataset(_data_config(dirs[0] / 'empty', prepare=False),
                          'train', 8, seed=0)


def test_global_batch_to_device(digits_dirs):
  dirs, _ = digits_dirs
  local = next(pipeline.make_dataset(_data_config(dirs[0]), 'train', 8, seed=0))
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1),
                           ('data', 'fsdp'))
  sharding = pipeline.batch_sharding(mesh)
  on_device = pipeline.global_batch_to_device(local, sharding)
  assert set(on_device) == set(local) - {'caption_text'}
  for key, array in on_device.items():
    assert array.sharding.spec == jax.sharding.PartitionSpec(('data', 'fsdp'))
    np.testing.assert_array_equal(np.asarray(array), local[key])


def test_default_data_config_is_lockable():
  config = data_config.default_data_config()
  config.lock()
  assert isinstance(config, ml_collections.ConfigDict)
  with pytest.raises(AttributeError, match='num_frame'):
    config.num_frame = 3

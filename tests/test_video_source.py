"""Video files as training data: the index, on-the-fly PyAV decoding, faults, the grain pipeline.

Videos are written by the tests (imageio/ffmpeg and Pillow); nothing is downloaded.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from videoldm.data import data_config as data_config_lib
from videoldm.data import pipeline
from videoldm.data import video_decode
from videoldm.data import video_index
from videoldm.data import video_io

# name: (frames, height, width, fps); num_frames=4 at frame_stride=2 is a span of 7 frames.
GOOD = {'wide.mp4': (30, 36, 64, 12.0), 'sub/tall.mp4': (20, 48, 32, 10.0),
        'alpha.gif': (14, 20, 20, 10.0)}
SHORT = {'short.mp4': (3, 16, 16, 8.0)}
CAPTIONS = {'wide.mp4': 'a wide shot', 'tall': 'a tall one'}
EXPECTED_CLIPS = {('wide.mp4', 0), ('wide.mp4', 7), ('wide.mp4', 14), ('wide.mp4', 21),
                  ('sub/tall.mp4', 0), ('sub/tall.mp4', 7), ('alpha.gif', 0), ('alpha.gif', 7)}
BAD = ('empty.mp4', 'cut.mp4', 'notes.mp4')


def moving_frames(frames, height, width, seed):
  """uint8 (f, h, w, 3): a random image shifting right 3 px per frame."""
  base = np.random.default_rng(seed).integers(0, 256, (1, height, width, 3))
  return np.concatenate([np.roll(base, 3 * i, axis=2) for i in range(frames)]).astype(np.uint8)


def write_alpha_gif(path, frames, height, width):
  """Left half opaque (its colour changes per frame), right half transparent."""
  rgba = np.zeros((frames, height, width, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[..., 1] = (np.arange(frames) * 15)[:, None, None]
  rgba[:, :, :width // 2, 3] = 255
  images = [Image.fromarray(frame, 'RGBA') for frame in rgba]
  images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0,
                 disposal=2)
  return rgba


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('videos')
  (root / 'sub').mkdir()
  for seed, (name, (frames, height, width, fps)) in enumerate({**GOOD, **SHORT}.items()):
    if name.endswith('.gif'):
      write_alpha_gif(root / name, frames, height, width)
    else:
      video_io.write_video(str(root / name), moving_frames(frames, height, width, seed), fps)
  (root / 'empty.mp4').write_bytes(b'')
  data = (root / 'wide.mp4').read_bytes()
  (root / 'cut.mp4').write_bytes(data[:len(data) // 2])
  (root / 'notes.mp4').write_text('not a video')
  (root / 'captions.json').write_text(json.dumps(CAPTIONS))
  return root


def videos_config(source, tmp_path, **overrides):
  config = data_config_lib.default_data_config()
  config.update(dict(name='videos', source=str(source), index_dir=str(tmp_path / 'index'),
                     num_frames=4, frame_stride=2, image_size=12, image_width=16))
  config.update(overrides)
  return config


def index_clips(index, folder):
  names = [os.path.relpath(path, folder) for path in index.paths]
  return {(names[file], int(start)) for file, start in zip(index.files, index.starts)}


def test_bad_files_are_named_once_each_and_every_good_clip_is_indexed(folder, tmp_path, caplog):
  with caplog.at_level('INFO'):
    index = video_index.build_index(str(folder), 'train', 4, 2, 0, str(tmp_path / 'index'))
  assert index_clips(index, folder) == EXPECTED_CLIPS
  warnings = [record.getMessage() for record in caplog.records if record.levelname == 'WARNING']
  assert sorted(message.split(':')[0] for message in warnings) == sorted(
      f'Skipping {folder / name}' for name in BAD)
  assert any('empty (0 bytes)' in message for message in warnings)
  summary = [record.getMessage() for record in caplog.records
             if record.getMessage().startswith('Video index of')]
  assert summary == [f'Video index of {folder} (train): 8 clips from 7 files: 3 usable, '
                     '3 unreadable (each named above), 1 shorter than 7 frames (num_frames=4 '
                     'at frame_stride=2).']
  captions = dict(zip((path.rsplit('/', 1)[-1] for path in index.paths), index.captions))
  assert captions == {'wide.mp4': 'a wide shot', 'tall.mp4': 'a tall one', 'alpha.gif': ''}
  # Resumable: a second build probes nothing again.
  caplog.clear()
  with caplog.at_level('INFO'):
    again = video_index.build_index(str(folder), 'train', 4, 2, 3, str(tmp_path / 'index'))
  assert not any('Probing' in record.getMessage() for record in caplog.records)
  assert len(again) == 3 + 5 + 8  # clip_stride=3: alpha.gif, sub/tall.mp4, wide.mp4.


@pytest.mark.parametrize('start, stride', [(0, 1), (5, 2), (13, 3), (23, 1)])
def test_on_the_fly_decoding_equals_a_reference_decode_after_the_aspect_crop(
    folder, start, stride):
  path = str(folder / 'wide.mp4')
  reference = video_io.read_video(path)[start:start + 3 * stride + 1:stride]  # imageio.
  clip = video_decode.decode_clip(path, start, 4, stride, 24, 20)
  np.testing.assert_array_equal(clip, video_io.resize_video(reference, 24, 20))
  assert video_decode.probe(path) == video_decode.VideoInfo(12.0, 30, 36, 64)


def test_alpha_is_composited_over_black(folder):
  frames, height, width, _ = GOOD['alpha.gif']
  rgba = write_alpha_gif(folder / 'alpha_again.gif', frames, height, width)
  clip = video_decode.decode_clip(str(folder / 'alpha_again.gif'), 2, 3, 4, height, width)
  np.testing.assert_array_equal(clip, np.stack([video_io.to_rgb(f) for f in rgba[2:11:4]]))
  assert clip[:, :, width // 2:].max() == 0 and clip[:, :, :width // 2, 0].min() == 200
  os.remove(folder / 'alpha_again.gif')


def test_a_grayscale_stream_becomes_three_equal_channels(tmp_path):
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  gray = (np.arange(10)[:, None, None] * 20 + np.zeros((10, 24, 32))).astype(np.uint8)
  path = str(tmp_path / 'gray.mkv')
  iio.imwrite(path, gray, fps=8, codec='ffv1', pixelformat='gray', macro_block_size=1)
  clip = video_decode.decode_clip(path, 1, 3, 3, 24, 32)
  np.testing.assert_array_equal(clip, np.repeat(gray[1:8:3, ..., None], 3, axis=-1))


def test_a_source_without_usable_clips_is_one_error(tmp_path):
  (tmp_path / 'only').mkdir()
  (tmp_path / 'only' / 'empty.mp4').write_bytes(b'')
  (tmp_path / 'only' / 'text.webm').write_text('no')
  with pytest.raises(ValueError, match=(
      f"^Video source '{tmp_path / 'only'}' split 'train' has no usable clip: 2 files: 0 "
      'usable, 2 unreadable')):
    video_index.build_index(str(tmp_path / 'only'), 'train', 4, 2, 0, str(tmp_path / 'i'))
  with pytest.raises(FileNotFoundError, match='is neither a folder nor a manifest'):
    video_index.list_entries(str(tmp_path / 'missing'))
  with pytest.raises(ValueError, match="Split 'test' is not available for a video source"):
    video_index.select_split([], 'test')
  with pytest.raises(ValueError, match='^data.source is empty'):
    pipeline.make_dataset(videos_config('', tmp_path), 'train', 2, seed=0)


def test_manifests_csv_and_jsonl_with_captions_and_spans(folder, tmp_path):
  rows = [{'path': 'wide.mp4', 'caption': 'first half', 'start': '0', 'end': '1.25'},
          {'path': str(folder / 'sub' / 'tall.mp4'), 'caption': 'all of it'},
          {'path': 'empty.mp4'}]
  csv_path = folder / 'manifest.csv'
  csv_path.write_text('path,caption,start,end\n' + ''.join(
      f"{row['path']},{row.get('caption', '')},{row.get('start', '')},{row.get('end', '')}\n"
      for row in rows))
  jsonl_path = folder / 'manifest.jsonl'
  jsonl_path.write_text(''.join(json.dumps(row) + '\n' for row in rows))
  indexes = [video_index.build_index(str(path), 'train', 4, 2, 0, str(tmp_path / 'index'))
             for path in (csv_path, jsonl_path)]
  for index in indexes:  # wide.mp4 frames [0, 15): starts 0 and 7; tall.mp4: 0 and 7.
    assert index.captions == ['first half', 'all of it']
    assert list(index.files) == [0, 0, 1, 1] and list(index.starts) == [0, 7, 0, 7]
  os.remove(csv_path)
  os.remove(jsonl_path)


def test_two_processes_read_disjoint_blocks_of_the_one_process_batches(folder, tmp_path):
  config = videos_config(folder, tmp_path)
  whole = pipeline.make_dataset(config, 'train', 4, seed=3)
  halves = [pipeline.make_dataset(config, 'train', 4, seed=3, process_index=p, process_count=2)
            for p in range(2)]
  for _ in range(3):
    batch = next(whole)
    parts = [next(half) for half in halves]
    assert batch['video'].shape == (4, 4, 12, 16, 3)
    np.testing.assert_array_equal(batch['video'], np.concatenate([p['video'] for p in parts]))
    assert list(batch['caption_text']) == [t for p in parts for t in p['caption_text']]
  assert set(batch['fps']) <= {5.0, 6.0}  # The source fps / frame_stride.


RESUME_DRIVER = '''
import json, sys
import numpy as np
from videoldm.data import data_config, pipeline
config = data_config.default_data_config()
config.update(json.loads(sys.argv[1]))
iterator = pipeline.make_dataset(config, 'train', 2, seed=5)
iterator.set_state(json.loads(sys.argv[2]))
np.save(sys.argv[3], np.stack([next(iterator)['video'] for _ in range(3)]))
'''


def test_iterator_state_restored_in_a_new_process_continues_identically(folder, tmp_path):
  config = videos_config(folder, tmp_path)
  iterator = pipeline.make_dataset(config, 'train', 2, seed=5)
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = np.stack([next(iterator)['video'] for _ in range(3)])
  out = tmp_path / 'next.npy'
  subprocess.run([sys.executable, '-c', RESUME_DRIVER, json.dumps(config.to_dict()),
                  json.dumps(state), str(out)], check=True, timeout=300,
                 env=dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3'))
  np.testing.assert_array_equal(np.load(out), expected)


def test_a_clip_that_fails_mid_training_is_replaced_and_counted(folder, tmp_path, caplog):
  copy = tmp_path / 'videos'
  shutil.copytree(folder, copy)
  config = videos_config(copy, tmp_path, num_frames=2, frame_stride=1)
  pipeline.make_dataset(config, 'train', 4, seed=0)  # Indexes (probes) the intact files.
  data = bytearray((copy / 'wide.mp4').read_bytes())
  data[len(data) // 3:] = bytes(len(data) - len(data) // 3)  # Broken, same size: still indexed.
  (copy / 'wide.mp4').write_bytes(bytes(data))
  iterator = pipeline.make_dataset(config, 'train', 4, seed=0, shuffle=False)
  with caplog.at_level('WARNING'):
    batches = [next(iterator) for _ in range(9)]  # All 7 + 1 + 10 + 15 clips of 2 frames.
  assert iterator.skipped_clips == 15  # Every clip of wide.mp4, each replaced.
  assert all(batch['video'].shape == (4, 2, 12, 16, 3) for batch in batches)
  warnings = [record.getMessage() for record in caplog.records
              if record.getMessage().startswith(('Skipping every clip', 'Skipping the clip'))]
  assert len(warnings) == 1 and warnings[0].startswith(f'Skipping every clip of {copy}/wide.mp4')


def test_training_starts_on_a_folder_with_bad_files(folder, tmp_path):
  from test_trainer import read_scalars, toy_config  # pylint: disable=g-import-not-at-top
  from videoldm.train import trainer  # pylint: disable=g-import-not-at-top
  config = toy_config(total_steps=2, data=videos_config(folder, tmp_path),
                      **{'optimizer.warmup_steps': 1})
  state = trainer.train_and_evaluate(config, str(tmp_path / 'run'))
  assert int(state.step) == 2
  assert read_scalars(str(tmp_path / 'run'), 'data/skipped_clips') == {1: 0.0, 2: 0.0}

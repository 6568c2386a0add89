"""Outputs are never overwritten silently, and never written into a run's checkpoints."""

import os

import pytest

from videoldm import evaluate
from videoldm import export
from videoldm import outputs
from videoldm.convert import temporal_transfer
from videoldm.pipelines import generate
from videoldm.pipelines import video_ldm


def _write(path, text='x'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as file:
    file.write(text)


def test_existing_files_and_non_empty_folders_are_refused_unless_overwrite(tmp_path):
  outputs.check_output(str(tmp_path / 'new.mp4'))
  (tmp_path / 'empty').mkdir()
  outputs.check_output(str(tmp_path / 'empty'))
  _write(str(tmp_path / 'full' / 'a.json'))
  _write(str(tmp_path / 'old.mp4'))
  for path in (tmp_path / 'full', tmp_path / 'old.mp4'):
    with pytest.raises(FileExistsError, match=f"Output {str(path)!r} already exists; pass "
                       r'--overwrite'):
      outputs.check_output(str(path))
    outputs.check_output(str(path), overwrite=True)


def test_a_run_checkpoint_folder_is_refused_even_with_overwrite(tmp_path):
  checkpoints = tmp_path / 'run' / 'video' / 'checkpoints'
  (checkpoints / '4' / 'state').mkdir(parents=True)
  for path in (checkpoints, checkpoints / '4', checkpoints / 'export'):
    with pytest.raises(ValueError, match=f"inside the checkpoint folder {str(checkpoints)!r}"):
      outputs.check_output(str(path), overwrite=True)


def test_replace_folder_clears_the_old_content_only_when_asked(tmp_path):
  _write(str(tmp_path / 'out' / 'stale.safetensors'))
  with pytest.raises(FileExistsError):
    outputs.replace_folder(str(tmp_path / 'out'))
  assert (tmp_path / 'out' / 'stale.safetensors').exists()
  outputs.replace_folder(str(tmp_path / 'out'), overwrite=True)
  assert os.listdir(tmp_path / 'out') == []


def test_entry_points_refuse_an_existing_output_before_loading_anything(tmp_path):
  missing_run = str(tmp_path / 'no_such_run')  # Loading it would raise FileNotFoundError.
  _write(str(tmp_path / 'video_frames.png'))
  settings = video_ldm.Settings(num_frames=3)
  with pytest.raises(FileExistsError, match='video_frames.png'):
    generate.generate(missing_run, settings, str(tmp_path / 'video.mp4'), fps=4.0)
  _write(str(tmp_path / 'export' / 'video.safetensors'))
  with pytest.raises(FileExistsError, match='export'):
    export.export(missing_run, 'safetensors', str(tmp_path / 'export'))
  _write(str(tmp_path / 'params.safetensors'))
  with pytest.raises(FileExistsError, match='params.safetensors'):
    temporal_transfer.convert_sd_pipeline(missing_run, str(tmp_path / 'params.safetensors'))
  _write(str(tmp_path / 'run' / 'evaluation' / 'report.json'))
  with pytest.raises(FileExistsError, match='report.json'):
    evaluate.evaluate(str(tmp_path / 'run'), num_videos=4)


def test_export_into_its_own_run_or_checkpoints_is_refused(tmp_path):
  run = tmp_path / 'run'
  (run / 'video' / 'checkpoints' / '2' / 'state').mkdir(parents=True)
  with pytest.raises(ValueError, match='inside the checkpoint folder'):
    export.export(str(run / 'video'), 'safetensors', str(run / 'video' / 'checkpoints' / 'x'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match="is or contains the exported run"):
    export.export(str(tmp_path / 'empty'), 'safetensors', str(tmp_path / 'empty'))
  with pytest.raises(ValueError, match="is or contains the exported run"):  # Never removed.
    export.export(str(run / 'video'), 'safetensors', str(run), overwrite=True)
  assert (run / 'video' / 'checkpoints' / '2' / 'state').is_dir()


def test_workdir_must_be_writable_and_have_room(tmp_path):
  outputs.check_workdir(str(tmp_path / 'new' / 'run'))
  assert (tmp_path / 'new' / 'run').is_dir() and not os.listdir(tmp_path / 'new' / 'run')
  (tmp_path / 'read_only').mkdir(mode=0o500)
  if os.access(tmp_path / 'read_only', os.W_OK):  # root ignores the mode bits.
    (tmp_path / 'file').write_text('x')
    unwritable = str(tmp_path / 'file' / 'run')  # A path under a regular file.
  else:
    unwritable = str(tmp_path / 'read_only' / 'run')
  with pytest.raises(PermissionError, match=f'Workdir {unwritable!r} is not writable'):
    outputs.check_workdir(unwritable)
  with pytest.raises(OSError, match=f"Workdir {str(tmp_path)!r} has [0-9]+ MiB free; at least"):
    outputs.check_workdir(str(tmp_path), min_free_bytes=2**62)
  outputs.check_workdir('gs://bucket/run')  # Remote: left to orbax.

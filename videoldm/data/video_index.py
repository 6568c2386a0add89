"""An index of the clips in a folder or manifest of videos: nothing is copied or decoded.

Sources (`config.data.source`, local or `gs://`):
  * a folder: every video file under it (recursively; `video_io.VIDEO_EXTENSIONS`),
    captions from `captions.json` ({"name": "caption"}) or `captions.tsv`/`.txt`
    (`name<TAB>caption` lines) in it, keyed by relative path, file name or stem;
  * a manifest, `.csv` (header row) or `.jsonl`: `path` (relative to the
    manifest's folder, or absolute, or a URL), optional `caption`, and optional
    `start`/`end` in seconds to index only that part of the file.

Every file is probed once (`video_decode.probe`: its header only) by one process
(process p of P takes files p, p + P, ...); results are appended to
`<index_dir>/probes-<p>-of-<P>.jsonl` as they come, keyed by path and size, so an
interrupted scan resumes and a grown folder probes only its new files. Clips are
then cut arithmetically: from each usable file, clips of `num_frames` frames at
`frame_stride`, one starting every `clip_stride` frames (0: back to back).

Unreadable, zero-byte, truncated or unsupported files are skipped with one
warning naming each; the summary line counts them and the videos too short
for one clip. A source without any usable clip is an error naming it and why.
"""

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import re

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from videoldm.data import video_decode
from videoldm.data import video_io

CAPTION_FILES = ('captions.json', 'captions.tsv', 'captions.txt')
MANIFEST_EXTENSIONS = ('.csv', '.jsonl')
_SPLIT = re.compile(r'^train(?:\[(\d*)%?:(\d*)%?\])?$')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One file of a source: where it is, its name in logs and captions, its caption, its span."""
  path: str
  name: str
  caption: str = ''
  start: float | None = None  # Seconds.
  end: float | None = None


@dataclasses.dataclass
class ClipIndex:
  """Clips as arrays (picklable for grain workers): clip k is frames
  `starts[k] + i * frame_stride` of file `paths[files[k]]`."""
  paths: list[str]
  captions: list[str]
  fps: np.ndarray      # float32 (num_files,)
  files: np.ndarray    # int32 (num_clips,)
  starts: np.ndarray   # int32 (num_clips,)

  def __len__(self) -> int:
    return len(self.starts)


# ----------------------------------------------------------------------------
# Listing a source.
# ----------------------------------------------------------------------------


def _join(root: str, path: str) -> str:
  return path if '://' in path or os.path.isabs(path) else str(epath.Path(root) / path)


def load_captions(folder: str) -> dict[str, str]:
  """The folder's captions mapping (see module docstring); {} when it has none."""
  for name in CAPTION_FILES:
    path = epath.Path(folder) / name
    if not path.is_file():
      continue
    text = path.read_text(encoding='utf-8')
    if name.endswith('.json'):
      captions = json.loads(text)
      if not isinstance(captions, dict):
        raise ValueError(f'Captions file {str(path)!r} holds a {type(captions).__name__}; '
                         'expected a JSON object mapping file name to caption.')
      return {str(key): str(value) for key, value in captions.items()}
    captions = {}
    for number, line in enumerate(text.splitlines(), start=1):
      if line.strip():
        key, tab, caption = line.partition('\t')
        if not tab:
          raise ValueError(f'Line {number} of captions file {str(path)!r} has no tab; '
                           'expected "name<TAB>caption".')
        captions[key.strip()] = caption.strip()
    return captions
  return {}


def caption_for(captions: dict[str, str], relative_path: str) -> str:
  """`relative_path`'s caption, looked up by path, file name, then stem ('' if none)."""
  name = relative_path.rsplit('/', 1)[-1]
  for key in (relative_path, name, os.path.splitext(name)[0]):
    if key in captions:
      return captions[key]
  return ''


def _video_names(folder: str) -> list[str]:
  """Relative '/'-joined paths of the video files under `folder` (recursively), sorted."""
  is_video = lambda name: name.lower().endswith(video_io.VIDEO_EXTENSIONS)
  if '://' not in folder:
    return sorted(os.path.relpath(os.path.join(top, name), folder).replace(os.sep, '/')
                  for top, _, files in os.walk(folder) for name in files if is_video(name))
  names, pending = [], [epath.Path(folder)]
  while pending:  # Remote folders: one listing per directory.
    for path in pending.pop().iterdir():
      if path.is_dir():
        pending.append(path)
      elif is_video(path.name):
        names.append(str(path)[len(folder.rstrip('/')) + 1:])
  return sorted(names)


def _folder_entries(folder: str) -> list[Entry]:
  captions = load_captions(folder)
  return [Entry(_join(folder, name), name, caption_for(captions, name))
          for name in _video_names(folder)]


def _manifest_rows(manifest: str) -> list[dict]:
  text = epath.Path(manifest).read_text(encoding='utf-8')
  if manifest.endswith('.csv'):
    return list(csv.DictReader(io.StringIO(text)))
  rows = []
  for number, line in enumerate(text.splitlines(), start=1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as error:
        raise ValueError(f'Line {number} of manifest {manifest!r} is not JSON ({error.msg}).')
  return rows


def _manifest_entries(manifest: str) -> list[Entry]:
  root = str(epath.Path(manifest).parent)
  entries = []
  for number, row in enumerate(_manifest_rows(manifest), start=1):
    if not row.get('path'):
      raise ValueError(f'Row {number} of manifest {manifest!r} has no "path"; expected the '
                       f'columns path, caption (optional), start and end (optional, seconds).')
    number_or_none = lambda value: float(value) if value not in (None, '') else None
    entries.append(Entry(_join(root, row['path']), row['path'], str(row.get('caption') or ''),
                         number_or_none(row.get('start')), number_or_none(row.get('end'))))
  return entries


def list_entries(source: str) -> list[Entry]:
  """The files of a folder or manifest (see module docstring), in a fixed order."""
  path = epath.Path(source)
  if source.lower().endswith(MANIFEST_EXTENSIONS) and path.is_file():
    entries = _manifest_entries(source)
  elif path.is_dir():
    entries = _folder_entries(source)
  else:
    raise FileNotFoundError(f'Video source {source!r} is neither a folder nor a manifest file '
                            f'({" or ".join(MANIFEST_EXTENSIONS)}).')
  if not entries:
    raise ValueError(f'Video source {source!r} lists no video files; expected files ending in '
                     f'{video_io.VIDEO_EXTENSIONS} or manifest rows.')
  return entries


def select_split(entries: list[Entry], split: str) -> list[Entry]:
  """'train' (all files) or 'train[a%:b%]': that slice of the files (whole videos never span
  both sides of a split)."""
  match = _SPLIT.match(split)
  if not match:
    raise ValueError(f'Split {split!r} is not available for a video source; expected '
                     "'train' or a percent slice such as 'train[:95%]' or 'train[95%:]'.")
  low, high = (int(value) if value else default
               for value, default in zip(match.groups(), (0, 100)))
  count = len(entries)
  return entries[count * low // 100:count * high // 100]


# ----------------------------------------------------------------------------
# Probing, sharded over processes and resumable.
# ----------------------------------------------------------------------------


def default_index_dir(source: str, data_dir: str) -> str:
  digest = hashlib.sha1(source.encode()).hexdigest()[:10]
  root = data_dir or os.path.join(os.path.expanduser('~'), '.cache', 'videoldm')
  return os.path.join(root, 'video_index', digest)


def _size(path: str) -> int:
  if '://' in path:
    return int(epath.Path(path).stat().length)
  return os.path.getsize(path)


def _probe_one(entry: Entry) -> dict:
  record = {'path': entry.path}
  try:
    record['size'] = _size(entry.path)
    if not record['size']:
      raise video_decode.DecodeError('the file is empty (0 bytes)')
    info = video_decode.probe(entry.path)
  except (video_decode.DecodeError, OSError) as error:
    record['error'] = str(error).splitlines()[0][:300]
    return record
  record.update(dataclasses.asdict(info))
  return record


def _read_probes(index_dir: epath.Path) -> dict[tuple[str, int], dict]:
  probes = {}
  for path in sorted(index_dir.glob('probes-*.jsonl')):
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # A line cut short by a kill: probed again.
        continue
      probes[(record['path'], record.get('size', -1))] = record
  return probes


def probe_entries(entries: list[Entry], index_dir: str, process_index: int = 0,
                  process_count: int = 1) -> dict[str, dict]:
  """{path: probe record} for every entry; this process probes its share of the new ones."""
  directory = epath.Path(index_dir)
  directory.mkdir(parents=True, exist_ok=True)
  known = _read_probes(directory)
  mine = directory / f'probes-{process_index:05d}-of-{process_count:05d}.jsonl'
  todo = []
  for entry in entries[process_index::process_count]:
    try:
      size = _size(entry.path)
    except OSError:
      size = -1
    if (entry.path, size) not in known:
      todo.append(entry)
  _append_probes(mine, todo)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('videoldm_video_index_probed')
  latest = {path: record for (path, _), record in _read_probes(directory).items()}
  missing = [entry for entry in entries if entry.path not in latest]
  if missing:  # Another process's share that it did not finish: probed here.
    _append_probes(mine, missing)
    latest = {path: record for (path, _), record in _read_probes(directory).items()}
  return latest


def _append_probes(probes_file: epath.Path, entries: list[Entry]) -> None:
  if not entries:
    return
  logging.info('Probing %d video files into %s.', len(entries), probes_file)
  with probes_file.open('a') as file:
    for entry in entries:
      file.write(json.dumps(_probe_one(entry)) + '\n')
      file.flush()


# ----------------------------------------------------------------------------
# Cutting clips.
# ----------------------------------------------------------------------------


def clip_starts(info: dict, entry: Entry, span: int, clip_stride: int) -> range:
  """Start frames of the clips of one probed file (within its manifest start/end)."""
  first = math.ceil(entry.start * info['fps'] - 1e-6) if entry.start is not None else 0
  end = info['num_frames']
  if entry.end is not None:
    end = min(end, math.floor(entry.end * info['fps'] + 1e-6))
  return range(max(first, 0), end - span + 1, clip_stride or span)


def build_index(source: str, split: str, num_frames: int, frame_stride: int, clip_stride: int,
                index_dir: str, process_index: int | None = None,
                process_count: int | None = None) -> ClipIndex:
  """The clips of `source`'s `split` (see module docstring), logging what was skipped."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  entries = select_split(list_entries(source), split)
  probes = probe_entries(entries, index_dir, process_index, process_count)
  span = (num_frames - 1) * frame_stride + 1
  paths, captions, fps, files, starts = [], [], [], [], []
  unreadable = too_short = 0
  for entry in entries:
    record = probes[entry.path]
    if 'error' in record:
      unreadable += 1
      if process_index == 0:
        logging.warning('Skipping %s: %s', entry.path, record['error'])
      continue
    entry_starts = clip_starts(record, entry, span, clip_stride)
    if not entry_starts:
      too_short += 1
      continue
    files.extend([len(paths)] * len(entry_starts))
    starts.extend(entry_starts)
    paths.append(entry.path)
    captions.append(entry.caption)
    fps.append(record['fps'])
  summary = (f'{len(entries)} files: {len(paths)} usable, {unreadable} unreadable (each named '
             f'above), {too_short} shorter than {span} frames (num_frames={num_frames} at '
             f'frame_stride={frame_stride})')
  if not starts:
    raise ValueError(f'Video source {source!r} split {split!r} has no usable clip: {summary}.')
  logging.info('Video index of %s (%s): %d clips from %s.', source, split, len(starts), summary)
  return ClipIndex(paths, captions, np.asarray(fps, np.float32), np.asarray(files, np.int32),
                   np.asarray(starts, np.int32))

"""A grain data source that decodes the clips of a `video_index.ClipIndex` on the fly.

Record k is clip k decoded with PyAV (`video_decode.decode_clip`) at the target
(height, width). A clip that fails to decode mid-training (a file changed or
vanished since it was probed, a corrupt packet) is replaced by the next clip of
the index that decodes; one warning names the file (unreadable: all its clips
are skipped) or the clip, and the record's `skipped_clips` is 1, so the run
never stops on one bad file and the batch keeps its place in the global order.
"""

import threading

from absl import logging
import numpy as np

from videoldm.data import video_decode
from videoldm.data import video_index

MAX_NEW_FAILURES = 32  # Failing files in a row for one record: the data is gone, not one file.


class VideoClipSource:
  """`source[k]` = {'video': uint8 (f, h, w, 3), 'fps', 'caption', 'skipped_clips'}."""

  def __init__(self, index: video_index.ClipIndex, num_frames: int, frame_stride: int,
               height: int, width: int):
    self.index = index
    self.num_frames, self.frame_stride = num_frames, frame_stride
    self.height, self.width = height, width
    self._failed_files: set[int] = set()  # This worker's failures, each warned about once.
    self._failed_clips: set[int] = set()
    self._lock = threading.Lock()  # grain reads records from several threads.

  def __getstate__(self) -> dict:  # Pickled into grain worker processes: a fresh lock there.
    return {key: value for key, value in self.__dict__.items() if key != '_lock'}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _lock=threading.Lock())

  def __len__(self) -> int:
    return len(self.index)

  def __repr__(self) -> str:  # grain compares it when restoring an iterator state.
    return (f'VideoClipSource({len(self.index)} clips of {len(self.index.paths)} files, '
            f'{self.num_frames} frames at stride {self.frame_stride}, '
            f'{self.height}x{self.width})')

  def __getitem__(self, record_key: int) -> dict:
    new_failures = 0
    for offset in range(len(self.index)):
      clip = (int(record_key) + offset) % len(self.index)
      file = int(self.index.files[clip])
      if clip in self._failed_clips or file in self._failed_files:
        continue
      path, start = self.index.paths[file], int(self.index.starts[clip])
      try:
        video = video_decode.decode_clip(path, start, self.num_frames, self.frame_stride,
                                         self.height, self.width)
      except video_decode.DecodeError as error:
        self._record_failure(error, file, clip, path, start)
        new_failures += 1
        if new_failures == MAX_NEW_FAILURES:
          break
        continue
      return {'video': video, 'fps': np.float32(self.index.fps[file]),
              'caption': self.index.captions[file], 'skipped_clips': np.int32(offset > 0)}
    raise RuntimeError(f'No clip from clip {record_key} on decodes ({new_failures} new '
                       'failures, warnings above); the video source is unreadable.')

  def _record_failure(self, error: video_decode.DecodeError, file: int, clip: int, path: str,
                      start: int) -> None:
    """Remembers a failure (a whole file if it does not open) and warns once about it."""
    reason = str(error).splitlines()[0]
    with self._lock:
      if isinstance(error, video_decode.UnreadableFile):
        if file not in self._failed_files:
          self._failed_files.add(file)
          logging.warning('Skipping every clip of %s: %s', path, reason)
      elif clip not in self._failed_clips:
        self._failed_clips.add(clip)
        logging.warning('Skipping the clip at frame %d of %s: %s', start, path, reason)

"""Input pipeline: a TFDS array_record dataset or a video index -> grain -> per-process batches.

Sources: `data.name = 'videos'` reads the files of `data.source` (a folder or
manifest, `video_index`) and decodes each clip on the fly in the grain workers
(`video_source`); any other name is a TFDS dataset with a `video` feature. With
`data.cache_dir`, the split the cache holds is read from it instead
(`latent_cache`: latent posteriors and text contexts in place of `video`).

`make_dataset` returns a `DataIterator` over this process's share of each
global batch. It is deterministic (order from `seed`, each record's clip
offset from `seed` and the record's global position) and checkpointable
(`get_state()` is a JSON-serialisable dict; `set_state` resumes exactly).

Sharding: every process walks the same global, shuffled index sequence;
process p of P takes the p-th contiguous block of every global batch
(its positions [p * b, (p + 1) * b), b = global_batch_size / P). That is the
row order `global_batch_to_device` builds on a mesh whose devices are grouped
by process (`jax.devices()`), so a run on P processes sees exactly the global
batches, in order, of a run on one.

Batch (B = global_batch_size / process_count examples; H, W = image_size,
image_width or image_size):
  video:        float32 (B, num_frames, H, W, 3) in [-1, 1]
  frame_stride: int32 (B,)
  fps:          float32 (B,), the clip's frame rate (source fps / frame_stride),
                when the dataset has an `fps` feature
  labels:       int32 (B, num_labels), when the dataset has `labels`/`label`
  caption:      int32 (B, L) token ids, when `tokenize_fn` is given
  caption_text: object (B,) of str, when the dataset has captions
`global_batch_to_device` turns the numeric entries into global jax Arrays.
"""

import json
from collections.abc import Callable, Sequence

import grain.python as grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

# Registers the local builder with TFDS.
from videoldm.data import latent_cache
from videoldm.data import moving_digits  # pylint: disable=unused-import
from videoldm.data import video_index
from videoldm.data import video_io
from videoldm.data import video_source

BATCH_AXES = ('data', 'fsdp')  # Mesh axes the batch dimension is sharded over.
TokenizeFn = Callable[[Sequence[str]], np.ndarray]


def get_builder(data_config: ml_collections.ConfigDict):
  """The TFDS builder for `data_config`, generated first if `prepare` is set.

  Builders are made with `file_format='array_record'` (grain reads them by
  index). Generation is deterministic, so processes on separate disks agree;
  on a shared filesystem, prepare once before a multi-process launch.
  """
  kwargs = dict(data_config.builder_kwargs.to_dict()
                if hasattr(data_config.builder_kwargs, 'to_dict')
                else data_config.builder_kwargs or {})
  if data_config.builder_config:
    kwargs['config'] = data_config.builder_config
  if data_config.data_dir:
    kwargs['data_dir'] = data_config.data_dir
  builder = tfds.builder(data_config.name, file_format='array_record',
                         **kwargs)
  if not builder.is_prepared():
    if not data_config.prepare:
      raise FileNotFoundError(
          f'Dataset {data_config.name!r} is not prepared in '
          f'{builder.data_dir!r}; set data.prepare=True to generate it.')
    builder.download_and_prepare()
  return builder


def model_example(clip: np.ndarray, frame_stride: int, element: dict) -> dict:
  """A uint8 clip and its record's fields as an example; `video` stays uint8 until batched
  (a quarter of the bytes through grain's buffers and worker processes)."""
  out = {'video': np.asarray(clip, np.uint8), 'frame_stride': np.int32(frame_stride)}
  if 'fps' in element:
    out['fps'] = np.float32(element['fps']) / np.float32(frame_stride)
  for key in ('labels', 'label'):
    if key in element:
      out['labels'] = np.atleast_1d(np.asarray(element[key], np.int32))
      break
  if 'caption' in element:
    caption = element['caption']
    out['caption_text'] = caption.decode('utf-8') if isinstance(caption, bytes) else str(caption)
  if 'skipped_clips' in element:
    out['skipped_clips'] = np.int32(element['skipped_clips'])
  return out


class SampleClip(grain.RandomMapTransform):
  """Picks a clip at a random (seeded) offset of a TFDS record and resizes it."""

  def __init__(self, num_frames: int, frame_stride: int, height: int, width: int):
    self.num_frames = num_frames
    self.frame_stride = frame_stride
    self.height, self.width = height, width

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    video = np.asarray(element['video'])
    span = (self.num_frames - 1) * self.frame_stride + 1
    if video.shape[0] < span:
      raise ValueError(
          f'A record has {video.shape[0]} frames, fewer than the {span} that '
          f'num_frames={self.num_frames} at frame_stride={self.frame_stride} '
          'need.')
    offset = int(rng.integers(0, video.shape[0] - span + 1))
    clip = video[offset:offset + span:self.frame_stride]
    if self.height:
      clip = video_io.resize_video(clip, self.height, self.width)
    return model_example(clip, self.frame_stride, element)


class DecodedClip(grain.MapTransform):
  """A `video_source.VideoClipSource` record (decoded at its stride and size) as an example."""

  def __init__(self, frame_stride: int):
    self.frame_stride = frame_stride

  def map(self, element: dict) -> dict:
    return model_example(element['video'], self.frame_stride, element)


class BlockSampler:
  """Maps the data loader's strided shards onto contiguous blocks of each global batch.

  With `ShardOptions(p, P)` the loader reads indices p, p + P, p + 2P, ...;
  its k-th read for process p becomes global position
  `(k // b) * B + p * b + k % b` (b = B / P), so its k-th local batch is
  rows `[p * b, (p + 1) * b)` of global batch k. Whole global batches only.
  """

  def __init__(self, sampler: grain.IndexSampler, global_batch_size: int, process_count: int):
    self._sampler = sampler
    self._global_batch_size = global_batch_size
    self._process_count = process_count
    self._local_batch_size = global_batch_size // process_count

  def __len__(self) -> int:
    return len(self._sampler) // self._global_batch_size * self._global_batch_size

  def __repr__(self) -> str:  # grain checks it when restoring a checkpointed state.
    return (f'BlockSampler({self._sampler!r}, global_batch_size={self._global_batch_size}, '
            f'process_count={self._process_count})')

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    process, local = index % self._process_count, index // self._process_count
    position = (local // self._local_batch_size * self._global_batch_size
                + process * self._local_batch_size + local % self._local_batch_size)
    record = self._sampler[position]
    return grain.RecordMetadata(index=index, record_key=record.record_key, rng=record.rng)


class DataIterator:
  """Iterator over per-process batches with `get_state`/`set_state`.

  grain yields single examples (in global-position order whatever the worker
  count); they are batched here, so batches do not depend on `num_workers`.
  `skipped_clips` counts the clips this process's video source could not
  decode and replaced (since this iterator was made).
  """

  def __init__(self, loader: grain.DataLoader, batch_size: int,
               tokenize_fn: TokenizeFn | None = None):
    self._iterator = iter(loader)
    self._batch_size = batch_size
    self._tokenize_fn = tokenize_fn
    self.skipped_clips = 0

  def __iter__(self) -> 'DataIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    examples = []
    for _ in range(self._batch_size):  # A partial last batch is dropped.
      examples.append(next(self._iterator))
    self.skipped_clips += sum(int(e.pop('skipped_clips', 0)) for e in examples)
    batch = {key: np.stack([e[key] for e in examples])
             for key in examples[0] if key != 'caption_text'}
    if 'video' in batch:
      batch['video'] = batch['video'].astype(np.float32) / 127.5 - 1.0  # uint8 -> [-1, 1].
    if 'caption_text' in examples[0]:
      texts = [e['caption_text'] for e in examples]
      batch['caption_text'] = np.array(texts, dtype=object)
      if self._tokenize_fn is not None:
        batch['caption'] = np.asarray(self._tokenize_fn(texts), np.int32)
    return batch

  def get_state(self) -> dict:
    """A JSON-serialisable snapshot of the position in the data."""
    return json.loads(self._iterator.get_state().decode())

  def set_state(self, state: dict) -> None:
    """Resumes from a `get_state()` snapshot (of an identically built one)."""
    self._iterator.set_state(json.dumps(state).encode())


def make_dataset(data_config: ml_collections.ConfigDict, split: str,
                 global_batch_size: int, *, seed: int,
                 process_index: int | None = None,
                 process_count: int | None = None, shuffle: bool = True,
                 num_epochs: int | None = None,
                 tokenize_fn: TokenizeFn | None = None) -> DataIterator:
  """Builds this process's deterministic, checkpointable batch iterator.

  Args:
    data_config: `config.data` (see `data_config.default_data_config`).
    split: TFDS split, e.g. 'train', 'test' or 'train[:90%]'.
    global_batch_size: examples per step over all processes.
    seed: 32-bit non-negative int; fixes the order and the clip offsets.
    process_index, process_count: this process's shard; default jax's.
    shuffle: shuffle globally each epoch (otherwise the source order).
    num_epochs: passes over the data; None repeats forever. A finite run ends
      after the last whole global batch (batches may span epochs).
    tokenize_fn: maps a list of captions to int token ids (B, L).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'Global batch size {global_batch_size} is not a positive '
                     f'multiple of the process count {process_count}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'Process index {process_index} is not in [0, '
                     f'{process_count}).')
  if not 0 <= seed < 2**32:
    raise ValueError(f'Data seed {seed} is not a 32-bit non-negative integer.')
  if data_config.num_frames < 1 or data_config.frame_stride < 1:
    raise ValueError(f'data.num_frames={data_config.num_frames} and '
                     f'data.frame_stride={data_config.frame_stride} must be '
                     '>= 1.')
  height = data_config.image_size
  width = data_config.image_width or height
  cached = None
  if data_config.cache_dir:
    metadata = latent_cache.read_metadata(data_config.cache_dir)
    if metadata['split'] == split:
      latent_cache.check_settings(metadata, ml_collections.ConfigDict({'data': data_config}),
                                  data_config.cache_dir, latent_cache.DATA_KEYS)
      cached = latent_cache.cache_source(data_config.cache_dir, metadata)
  if cached is not None:  # Frozen-encoder outputs (`python -m videoldm.cache`).
    source, operation = cached, latent_cache.CachedClip()
  elif data_config.name == 'videos':
    if not data_config.source:
      raise ValueError("data.source is empty; data.name='videos' expects a folder or a "
                       '.csv/.jsonl manifest of video files.')
    if not height:
      raise ValueError('data.image_size=0 keeps the stored size, which a video source lacks; '
                       'expected the frame height (and data.image_width) in pixels.')
    index = video_index.build_index(
        data_config.source, split, data_config.num_frames, data_config.frame_stride,
        data_config.clip_stride,
        data_config.index_dir or video_index.default_index_dir(data_config.source,
                                                              data_config.data_dir),
        process_index, process_count)
    source = video_source.VideoClipSource(index, data_config.num_frames,
                                          data_config.frame_stride, height, width)
    operation = DecodedClip(data_config.frame_stride)
  else:
    source = tfds_source(data_config, split)
    operation = SampleClip(data_config.num_frames, data_config.frame_stride, height, width)
  sampler = grain.IndexSampler(len(source), shuffle=shuffle,
                               num_epochs=num_epochs, seed=seed)
  # Each process reads floor(len / process_count) positions and drops the
  # partial batch, so all processes (and a single one) make the same number
  # of steps when num_epochs is finite.
  if num_epochs is not None and len(sampler) < global_batch_size:
    raise ValueError(f'Split {split!r} has {len(source)} examples x '
                     f'{num_epochs} epochs, fewer than one global batch of '
                     f'{global_batch_size}.')
  local_batch = global_batch_size // process_count
  # Decoded clips are large: read ahead two batches (grain's default is 500 examples).
  read_options = grain.ReadOptions(num_threads=min(16, 2 * local_batch),
                                   prefetch_buffer_size=2 * local_batch)
  loader = grain.DataLoader(
      data_source=source,
      sampler=BlockSampler(sampler, global_batch_size, process_count),
      operations=[operation],
      worker_count=data_config.num_workers,
      read_options=read_options,
      shard_options=grain.ShardOptions(shard_index=process_index,
                                       shard_count=process_count,
                                       drop_remainder=True))
  return DataIterator(loader, local_batch, tokenize_fn)


def tfds_source(data_config: ml_collections.ConfigDict, split: str):
  """The grain source of a TFDS split, checked to hold clips long enough."""
  builder = get_builder(data_config)
  video_shape = builder.info.features['video'].shape
  span = (data_config.num_frames - 1) * data_config.frame_stride + 1
  if video_shape[0] is not None and video_shape[0] < span:
    raise ValueError(
        f'Dataset {builder.name!r} has clips of {video_shape[0]} frames; '
        f'num_frames={data_config.num_frames} at frame_stride='
        f'{data_config.frame_stride} needs {span}.')
  return builder.as_data_source(split=split)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Shards the leading (batch) axis over the mesh's ('data', 'fsdp') axes."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))


def global_batch_to_device(local_batch: dict[str, np.ndarray],
                           sharding: jax.sharding.Sharding) -> dict:
  """Global jax Arrays from each process's numeric batch entries.

  Object arrays (`caption_text`) stay on the host and are left out.
  """
  return {
      key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for key, value in local_batch.items()
      if np.asarray(value).dtype != object
  }

"""Streaming building blocks: fixed-shape chunking of frame streams.

Each pipeline step consumes an iterator of frames (arrays `(b, ...)`, one per
time step) and yields frames, holding only a window of them, so memory does
not grow with the video's length. Chunks are padded to one fixed shape so the
compiled function of a step is reused for every chunk.
"""

from typing import Callable, Iterable, Iterator

import jax.numpy as jnp


def stack_padded(frames: list, length: int) -> jnp.ndarray:
  """`(b, length, ...)` from `frames` (each `(b, ...)`), repeating the last as padding."""
  padded = list(frames) + [frames[-1]] * (length - len(frames))
  return jnp.stack(padded, axis=1)


def chunked_overlap(frames: Iterable, chunk: int, overlap: int,
                    fn: Callable[[jnp.ndarray], jnp.ndarray]) -> Iterator:
  """Applies `fn` to chunks of `chunk` frames with `overlap` frames of context per side.

  `fn` maps `(b, overlap + chunk + overlap, ...)` to the same frame count; only
  the middle `chunk` frames of each call are yielded, so every output frame
  saw `overlap` neighbours on each side (where they exist) and chunks join
  without seams. At the video's start and end, the context is padded by
  repeating the edge frame.
  """
  if chunk < 1 or overlap < 0:
    raise ValueError(f'chunk={chunk} must be >= 1 and overlap={overlap} >= 0.')
  iterator = iter(frames)
  history: list = []  # The last `overlap` emitted inputs (left context).
  pending: list = []  # Inputs waiting to be emitted.
  exhausted = False
  while True:
    while not exhausted and len(pending) < chunk + overlap:
      try:
        pending.append(next(iterator))
      except StopIteration:
        exhausted = True
    if not pending:
      return
    emit = pending[:chunk]
    core = emit + [emit[-1]] * (chunk - len(emit))  # Fixed shape for the last chunk.
    right = pending[chunk:chunk + overlap]
    left = history[-overlap:] if overlap else []
    left = [emit[0]] * (overlap - len(left)) + left
    right = right + [(right or core)[-1]] * (overlap - len(right))
    outputs = fn(stack_padded(left + core + right, chunk + 2 * overlap))
    for i in range(len(emit)):
      yield outputs[:, overlap + i]
    history = (history + emit)[-overlap:] if overlap else []
    pending = pending[chunk:]
    if exhausted and not pending:
      return


def chunked(frames: Iterable, chunk: int, fn: Callable[[jnp.ndarray], jnp.ndarray]) -> Iterator:
  """Applies `fn` to non-overlapping chunks of `chunk` frames (last one padded)."""
  return chunked_overlap(frames, chunk, 0, fn)

"""CLIP byte-level BPE tokenizer that reads local files only.

Gives the ids of transformers' `CLIPTokenizer`: NFC normalisation, whitespace
runs -> one space, lowercase, CLIP's regex pre-tokenisation, bytes mapped to
printable characters, BPE with a `</w>` end-of-word suffix, then
`bos ... eos`, truncated and padded to `max_length` with the folder's pad token.
"""

import functools
import json
import os
import typing
import unicodedata

import numpy as np
import regex

_PIECES = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_WHITESPACE = regex.compile(r'\s+')
_SUFFIX = '</w>'


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from the 256 byte values to printable characters."""
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  codes, extra = list(printable), 0
  for byte in range(256):
    if byte not in printable:
      printable.append(byte)
      codes.append(256 + extra)
      extra += 1
  return dict(zip(printable, map(chr, codes)))


def _special_content(token) -> str:
  """A special token as written in tokenizer_config.json (string or AddedToken dict)."""
  return token['content'] if isinstance(token, dict) else str(token)


class CLIPTokenizer:
  """`tokenizer(texts) -> int32 (b, max_length)`; see the module docstring."""

  def __init__(self, vocab: typing.Mapping[str, int],
               merges: typing.Sequence[tuple[str, str]], max_length: int = 77,
               bos_token: str = '<|startoftext|>', eos_token: str = '<|endoftext|>',
               pad_token: str = '<|endoftext|>', unk_token: str = '<|endoftext|>'):
    for name, token in (('bos_token', bos_token), ('eos_token', eos_token),
                        ('pad_token', pad_token), ('unk_token', unk_token)):
      if token not in vocab:
        raise ValueError(f'Tokenizer {name} {token!r} is not in the vocabulary.')
    if max_length < 2:
      raise ValueError(f'Tokenizer max_length {max_length} must be at least 2 '
                       '(bos and eos).')
    self.vocab = dict(vocab)
    self.merge_ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
    self.max_length = max_length
    self.bos_token_id = self.vocab[bos_token]
    self.eos_token_id = self.vocab[eos_token]
    self.pad_token_id = self.vocab[pad_token]
    self.unk_token_id = self.vocab[unk_token]
    # transformers splits every special token (also SD 2's pad token '!') out of
    # the raw text before normalising it.
    specials = sorted({bos_token, eos_token, pad_token, unk_token}, key=len, reverse=True)
    self._specials = regex.compile('(' + '|'.join(map(regex.escape, specials)) + ')')
    self._byte_map = bytes_to_unicode()
    self._bpe_cache: dict[str, list[int]] = {}

  @classmethod
  def from_folder(cls, path: str) -> 'CLIPTokenizer':
    """Reads `vocab.json`, `merges.txt` and (optionally) `tokenizer_config.json`
    / `special_tokens_map.json` of a Hugging Face tokenizer folder."""
    files = {name: os.path.join(path, name) for name in ('vocab.json', 'merges.txt')}
    for file in files.values():
      if not os.path.isfile(file):
        raise FileNotFoundError(f'Tokenizer file {file!r} does not exist.')
    with open(files['vocab.json'], encoding='utf-8') as f:
      vocab = json.load(f)
    with open(files['merges.txt'], encoding='utf-8') as f:
      lines = [line.rstrip('\n') for line in f]
    merges = [tuple(line.split(' ')) for line in lines
              if line.strip() and not line.startswith('#version')]
    bad = [line for line in merges if len(line) != 2]
    if bad:
      raise ValueError(f'merges.txt line {" ".join(bad[0])!r} in {path!r} is not '
                       'two space-separated symbols.')
    settings = {}
    for name in ('special_tokens_map.json', 'tokenizer_config.json'):
      file = os.path.join(path, name)
      if os.path.isfile(file):
        with open(file, encoding='utf-8') as f:
          settings.update(json.load(f))
    kwargs = {name: _special_content(settings[name])
              for name in ('bos_token', 'eos_token', 'pad_token', 'unk_token')
              if settings.get(name) is not None}
    max_length = settings.get('model_max_length', 77)
    if not isinstance(max_length, int) or max_length > 10**6:
      max_length = 77  # transformers writes a huge sentinel when unset.
    return cls(vocab, merges, max_length=max_length, **kwargs)

  def _bpe(self, word: str) -> list[str]:
    """BPE of one pre-token (already byte-mapped) into vocabulary symbols."""
    symbols = list(word[:-1]) + [word[-1] + _SUFFIX]
    while len(symbols) > 1:
      pairs = [(self.merge_ranks.get(pair, float('inf')), index)
               for index, pair in enumerate(zip(symbols, symbols[1:]))]
      rank, position = min(pairs)
      if rank == float('inf'):
        break
      first, second = symbols[position], symbols[position + 1]
      merged, index = [], 0
      while index < len(symbols):
        if (index + 1 < len(symbols) and symbols[index] == first
            and symbols[index + 1] == second):
          merged.append(first + second)
          index += 2
        else:
          merged.append(symbols[index])
          index += 1
      symbols = merged
    return symbols

  def _encode_text(self, text: str) -> list[int]:
    text = _WHITESPACE.sub(' ', unicodedata.normalize('NFC', text)).lower()
    ids = []
    for piece in _PIECES.findall(text):
      mapped = ''.join(self._byte_map[b] for b in piece.encode('utf-8'))
      if mapped not in self._bpe_cache:
        self._bpe_cache[mapped] = [self.vocab.get(symbol, self.unk_token_id)
                                   for symbol in self._bpe(mapped)]
      ids.extend(self._bpe_cache[mapped])
    return ids

  def encode(self, text: str) -> list[int]:
    """Ids of `text` without bos/eos, padding or truncation."""
    ids = []
    for index, part in enumerate(self._specials.split(text)):
      if index % 2:  # A special token written literally in the text.
        ids.append(self.vocab[part])
      elif part:
        ids.extend(self._encode_text(part))
    return ids

  def __call__(self, texts: str | typing.Sequence[str],
               max_length: int | None = None) -> np.ndarray:
    """`bos ids eos pad...`, truncated to `max_length` (default: the folder's)."""
    if isinstance(texts, str):
      texts = [texts]
    max_length = max_length or self.max_length
    if max_length < 2:
      raise ValueError(f'Tokenizer max_length {max_length} must be at least 2 '
                       '(bos and eos).')
    out = np.full((len(texts), max_length), self.pad_token_id, np.int32)
    for row, text in enumerate(texts):
      ids = [self.bos_token_id] + self.encode(text)[:max_length - 2] + [self.eos_token_id]
      out[row, :len(ids)] = ids
    return out

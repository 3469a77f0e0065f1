"""Tokenizers for the language-model pipeline: byte-level by default, or a HF `tokenizers` file.

A tokenizer here is any object with

    vocab_size: int          # ids are in [0, vocab_size)
    eos_id: int              # appended after every document (the document separator)
    encode(text: str | bytes) -> np.ndarray   # int32 [n], no separator added
    decode(ids) -> str

Byte-level convention (`ByteTokenizer`, vocab 256, the size of our tiny presets): a token is one
byte of the UTF-8 encoding, and the document separator is byte 0xFF (id 255).  0xFF never occurs
in valid UTF-8, so the separator cannot collide with text (not even with a NUL character), every
string round-trips exactly, and no id beyond 255 is needed.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

# Special tokens tried, in order, as the document separator of a HF tokenizer file.
EOS_CANDIDATES = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<eos>', '<|eos|>', '[SEP]', '<sep>')


@runtime_checkable
class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int

  def encode(self, text: str | bytes) -> np.ndarray:
    ...

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ...


class ByteTokenizer:
  """UTF-8 bytes as tokens (ids 0..255); documents are separated by 0xFF (id 255)."""
  vocab_size = 256
  eos_id = 255
  name = 'byte'

  def encode(self, text: str | bytes) -> np.ndarray:
    """Text -> int32 [num_bytes] (the UTF-8 bytes; no separator added)."""
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """int [n] -> text; separators (255) become blank lines, invalid UTF-8 becomes U+FFFD."""
    return '\n\n'.join(self.decode_documents(ids))

  def decode_documents(self, ids: Sequence[int] | np.ndarray) -> list[str]:
    """int [n] -> the documents between separators (a trailing separator ends the last one)."""
    data = np.asarray(ids, np.int64)
    if data.size and (data.min() < 0 or data.max() > 255):
      raise ValueError(f'byte token ids must be in [0, 255], got range '
                       f'[{data.min()}, {data.max()}]')
    docs = data.astype(np.uint8).tobytes().split(bytes([self.eos_id]))
    if len(docs) > 1 and not docs[-1]:
      docs.pop()
    return [d.decode('utf-8', errors='replace') for d in docs]

  def __repr__(self) -> str:
    return 'ByteTokenizer(vocab_size=256, eos_id=255)'


class HFTokenizer:
  """A Hugging Face `tokenizers` JSON file (e.g. a model's `tokenizer.json`).

  Needs the `tokenizers` package (installed with `transformers`; `pip install tokenizers`).
  The separator is `eos_token` if given, else the first of `EOS_CANDIDATES` in the vocabulary.
  """

  def __init__(self, path: str | os.PathLike, eos_token: str | None = None):
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, 'tokenizer.json')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'tokenizer file {path!r} does not exist; expected a Hugging Face '
                              '`tokenizers` JSON file (or a directory holding tokenizer.json)')
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'reading the tokenizer file {path!r} needs the `tokenizers` package: '
                        'pip install tokenizers') from e
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises a bare Exception on bad JSON
      raise ValueError(f'{path!r} is not a valid Hugging Face tokenizers JSON file: {e}') from e
    self.path = path
    self.name = path
    self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    candidates = (eos_token,) if eos_token is not None else EOS_CANDIDATES
    for token in candidates:
      token_id = self._tok.token_to_id(token)
      if token_id is not None:
        self.eos_token, self.eos_id = token, int(token_id)
        break
    else:
      raise ValueError(f'tokenizer {path!r} has none of the separator tokens {list(candidates)}; '
                       'pass eos_token= naming the token that ends a document')

  def encode(self, text: str | bytes) -> np.ndarray:
    """Text -> int32 [n] token ids (no special tokens added)."""
    if isinstance(text, (bytes, bytearray, np.bytes_)):
      text = bytes(text).decode('utf-8', errors='replace')
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    return self._tok.decode(ids, skip_special_tokens=False)

  def __repr__(self) -> str:
    return f'HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})'


def get_tokenizer(tokenizer: Any = None) -> Tokenizer:
  """None or 'byte' -> `ByteTokenizer`; a path -> `HFTokenizer`; a `Tokenizer` object -> itself."""
  if tokenizer is None or (isinstance(tokenizer, str) and tokenizer == 'byte'):
    return ByteTokenizer()
  if isinstance(tokenizer, (str, os.PathLike)):
    return HFTokenizer(tokenizer)
  if isinstance(tokenizer, Tokenizer):
    return tokenizer
  raise TypeError(f'tokenizer must be None, "byte", a path to a tokenizers JSON file, or an object '
                  f'with vocab_size, eos_id, encode and decode; got {type(tokenizer).__name__}')

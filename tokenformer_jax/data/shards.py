"""Token shards: ArrayRecord files of fixed-size records of token ids, written atomically.

A shard is the token stream of its documents, each followed by end-of-text, cut into records of
`record_tokens` ids (the last one shorter), stored little-endian as uint16 (vocabularies below 65,536)
or uint32. ArrayRecord gives random access to records, so a window of any length starting at any token
is one or two record reads: the sequence length is chosen at training time, not when preparing.
"""
import os
import shutil
import tempfile

import numpy as np
from array_record.python import array_record_module

from tokenformer_jax.data import sources
from tokenformer_jax.errors import UserError

RECORD_TOKENS = 4096
# One record per chunk, uncompressed: token ids barely compress, and random reads stay one seek.
_WRITER_OPTIONS = 'group_size:1,uncompressed'
_READER_OPTIONS = 'readahead_buffer_size:0,max_parallelism:0'


def dtype_for(vocab_size: int) -> np.dtype:
  return np.dtype('<u2' if vocab_size <= 2**16 else '<u4')


class Writer:
  """Appends documents' ids to one shard; `close` commits it under its final name."""

  def __init__(self, path: str, dtype: np.dtype, record_tokens: int = RECORD_TOKENS):
    self.path, self.dtype, self.record_tokens = path, np.dtype(dtype), record_tokens
    self.tokens = self.documents = self.records = 0
    local_dir = None if sources.is_remote(path) else os.path.dirname(path)
    fd, self._tmp = tempfile.mkstemp(dir=local_dir, prefix=f'.{os.path.basename(path)}.',
                                     suffix='.tmp')
    os.close(fd)
    self._writer = array_record_module.ArrayRecordWriter(self._tmp, _WRITER_OPTIONS)
    self._pending = []
    self._pending_len = 0

  def add(self, ids_N: np.ndarray) -> None:
    """One document's ids (end-of-text included)."""
    self._pending.append(np.asarray(ids_N, self.dtype))
    self._pending_len += len(ids_N)
    self.tokens += len(ids_N)
    self.documents += 1
    if self._pending_len >= self.record_tokens:
      self._flush(final=False)

  def _flush(self, final: bool) -> None:
    stream = np.concatenate(self._pending) if self._pending else np.zeros(0, self.dtype)
    full = len(stream) // self.record_tokens * self.record_tokens
    for start in range(0, full, self.record_tokens):
      self._writer.write(stream[start:start + self.record_tokens].tobytes())
      self.records += 1
    rest = stream[full:]
    if final and len(rest):
      self._writer.write(rest.tobytes())
      self.records += 1
      rest = rest[:0]
    self._pending, self._pending_len = [rest], len(rest)

  def close(self) -> dict:
    """Writes the last record, renames the file into place; returns the shard's manifest entry."""
    self._flush(final=True)
    self._writer.close()
    num_bytes = os.path.getsize(self._tmp)
    if sources.is_remote(self.path):
      fs = sources.filesystems()
      with open(self._tmp, 'rb') as src, fs.create(self.path) as dst:
        shutil.copyfileobj(src, dst, 1 << 24)
      os.remove(self._tmp)
    else:
      os.chmod(self._tmp, 0o644)
      os.replace(self._tmp, self.path)
    return {'file': os.path.basename(self.path), 'tokens': self.tokens, 'documents': self.documents,
            'records': self.records, 'bytes': num_bytes}

  def abort(self) -> None:
    try:
      self._writer.close()
    finally:
      if os.path.exists(self._tmp):
        os.remove(self._tmp)


def check_counts(path: str, entry: dict, dtype: str, record_tokens: int) -> None:
  """The shard holds the records and tokens its manifest entry says. A count raised in the manifest
  would otherwise surface as a failed read deep in the input pipeline, after the run has started
  writing; the reader knows the record count from the file's index, and the last record's length
  gives the token count, so this reads one record, not the data."""
  try:
    reader = array_record_module.ArrayRecordReader(path, _READER_OPTIONS)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise UserError(f'shard {path} is unreadable ({str(e)[:200]}); prepare the dataset again') from e
  try:
    records = reader.num_records()
    last = reader.read([records - 1])[0] if records else b''
  finally:
    reader.close()
  tokens = (records - 1) * record_tokens + len(last) // np.dtype(dtype).itemsize if records else 0
  if records != entry['records'] or tokens != entry['tokens']:
    raise UserError(f'shard {path} holds {records} records of {tokens} tokens, but the manifest says '
                    f'{entry["records"]} records of {entry["tokens"]} tokens; prepare the dataset again')


class Reader:
  """Random access to a shard's tokens; opened lazily, so it pickles (grain may copy sources)."""

  def __init__(self, path: str, tokens: int, dtype: str, record_tokens: int):
    self.path, self.tokens, self.dtype, self.record_tokens = path, tokens, np.dtype(dtype), record_tokens
    self._reader = None

  def __getstate__(self):
    return {**self.__dict__, '_reader': None}

  def read(self, start: int, length: int) -> np.ndarray:
    """Tokens [start, start + length) as int32."""
    if self._reader is None:
      try:
        self._reader = array_record_module.ArrayRecordReader(self.path, _READER_OPTIONS)
      except Exception as e:  # pylint: disable=broad-exception-caught
        raise UserError(f'shard {self.path} is unreadable ({str(e)[:200]}); prepare the dataset again')
    first, last = start // self.record_tokens, (start + length - 1) // self.record_tokens
    records = self._reader.read(list(range(first, last + 1)))
    stream = np.frombuffer(b''.join(records), self.dtype)
    offset = start - first * self.record_tokens
    return stream[offset:offset + length].astype(np.int32)

"""Training input through grain: windows over prepared shards, a global shuffle, mixtures, and an
iterator whose position is one global count.

A split's windows are `seq_len + 1` tokens at stride `seq_len` within each shard (never across shards),
numbered across shards; any seq_len works on the same shards. Training shuffles them globally (grain's
index shuffle: no list of windows is ever built) and repeats with a new order each epoch; a mixture
interleaves several datasets by weight (grain's deterministic mix).

The position is the number of global batches delivered. Global batch b is rows [b·B, (b+1)·B) of the
shuffled stream and process p reads its slice of it, so the stream does not depend on the number of
processes: a run saved by one process resumes on two and continues the same order, repeating and
skipping nothing.
"""
import os

import grain
import numpy as np

from tokenformer_jax.data import shards
from tokenformer_jax.errors import UserError

# Windows are a record read or two each; a few threads and a short buffer suffice.
_READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=32)


class Windows(grain.sources.RandomAccessDataSource):
  """Random access to the int32 windows of one split of a prepared dataset."""

  def __init__(self, dataset_dir: str, manifest: dict, split: str | tuple, seq_len: int):
    """`split`: a split's name, or several names whose shards follow one another (a whole dataset
    used as validation data)."""
    if seq_len < 1:
      raise UserError(f'sequence length must be positive, got {seq_len}')
    names = (split,) if isinstance(split, str) else tuple(split)
    self.name = f'{dataset_dir} ({" + ".join(names)})'
    self.seq_len = seq_len
    entries = [e for name in names for e in manifest['splits'][name]['shards']]
    self._readers = [shards.Reader(os.path.join(dataset_dir, e['file']), e['tokens'], manifest['dtype'],
                                   manifest['record_tokens']) for e in entries]
    counts = [max(e['tokens'] - 1, 0) // seq_len for e in entries]
    self._ends = np.cumsum(counts, dtype=np.int64)
    self.tokens = sum(e['tokens'] for e in entries)

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(f'window {index} out of range [0, {len(self)})')
    shard = int(np.searchsorted(self._ends, index, side='right'))
    local = index - (int(self._ends[shard - 1]) if shard else 0)
    return self._readers[shard].read(local * self.seq_len, self.seq_len + 1)

  def __repr__(self) -> str:
    return f'Windows({self.name}, windows={len(self)}, seq_len={self.seq_len})'


def _seed(seed: int, k: int) -> int:
  """Grain reseeds epoch e with seed + e, so nearby seeds would replay orders; hashing keeps them apart."""
  return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def shuffled_stream(sources: list[Windows], weights: list[float], seed: int) -> grain.MapDataset:
  """The endless, globally shuffled window stream (a weighted mixture when several sources)."""
  if seed < 0:
    raise UserError(f'seed must be non-negative, got {seed}')
  streams = [grain.MapDataset.source(s).shuffle(seed=_seed(seed, k)).repeat()
             for k, s in enumerate(sources)]
  if len(streams) == 1:
    return streams[0]
  return grain.MapDataset.mix(streams, weights)


class BatchIterator:
  """This process's rows of consecutive global batches; `state()` / `set_state()` hold the position."""

  def __init__(self, stream: grain.MapDataset, global_batch: int, process_index: int = 0,
               process_count: int = 1, start: int = 0):
    if global_batch % process_count:
      raise UserError(f'batch size {global_batch} is not divisible by {process_count} processes')
    self._stream, self._global = stream, global_batch
    self._local = global_batch // process_count
    self._offset = process_index * self._local
    self.set_state({'global_batches': start})

  def _rows(self, start: int):
    local, glob, offset, stream = self._local, self._global, self._offset, self._stream

    def row(j: int) -> np.ndarray:
      return stream[(j // local) * glob + offset + j % local]

    ds = grain.MapDataset.range(start * local, 2**62).map(row).batch(local)
    return iter(ds.to_iter_dataset(_READ_OPTIONS))

  def state(self) -> dict:
    return {'global_batches': self._position}

  def set_state(self, state: dict) -> None:
    self._position = int(state['global_batches'])
    self._it = self._rows(self._position)

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    batch = next(self._it)
    self._position += 1
    return batch


class Position:
  """A data position without a stream: growth carries it from the source checkpoint to the grown one."""

  def __init__(self):
    self._state = {'global_batches': 0}

  def state(self) -> dict:
    return dict(self._state)

  def set_state(self, state: dict) -> None:
    self._state = dict(state)


def check_size(source: Windows, global_batch: int, what: str) -> None:
  if len(source) < global_batch:
    raise UserError(f'{what} too small: {source.name} has {source.tokens} tokens, {len(source)} windows '
                    f'of length {source.seq_len + 1}, fewer than batch {global_batch}')


def eval_batches(source: Windows, batch_size: int, max_batches: int) -> list[np.ndarray]:
  """The first consecutive windows of a validation split as up to max_batches [batch_size, seq_len + 1]."""
  if max_batches < 1:
    raise UserError(f'number of eval batches must be positive, got {max_batches}')
  check_size(source, batch_size, 'validation split')
  num_batches = min(max_batches, len(source) // batch_size)
  return [np.stack([source[b * batch_size + i] for i in range(batch_size)]) for b in range(num_batches)]

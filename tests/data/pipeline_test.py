"""Windows over shards, the global shuffle, mixtures, and a position that any process count resumes."""
import numpy as np
import pytest

from tokenformer_jax.data import pipeline, shards
from tokenformer_jax.errors import UserError

SEQ = 4


def _dataset(tmp_path, name: str, shard_tokens: list[int], first: int = 0):
  """A dataset of arange tokens (token i at stream position i within each shard, offset by `first`)."""
  d = tmp_path / name
  d.mkdir()
  entries, start = [], first
  for k, n in enumerate(shard_tokens):
    w = shards.Writer(str(d / f'train-{k}.array_record'), np.dtype('<u4'), record_tokens=5)
    w.add(np.arange(start, start + n))
    entries.append(w.close())
    start += n
  manifest = {'dtype': '<u4', 'record_tokens': 5,
              'splits': {'train': {'shards': entries}, 'validation': {'shards': entries[:1]}}}
  return str(d), manifest


def _starts(batches) -> list[int]:
  return [int(row[0]) for b in batches for row in b]


def test_windows_stay_within_shards(tmp_path):
  d, m = _dataset(tmp_path, 'a', [21, 10])   # 5 + 2 windows of 5 tokens at stride 4
  w = pipeline.Windows(d, m, 'train', SEQ)
  assert len(w) == 7
  for i in range(7):
    start = i * SEQ if i < 5 else 21 + (i - 5) * SEQ
    np.testing.assert_array_equal(w[i], np.arange(start, start + SEQ + 1))
  with pytest.raises(IndexError):
    w[7]  # pylint: disable=pointless-statement


def test_every_window_once_per_epoch_and_reshuffled(tmp_path):
  d, m = _dataset(tmp_path, 'a', [4 * 12 + 1])
  stream = pipeline.shuffled_stream([pipeline.Windows(d, m, 'train', SEQ)], [1.0], seed=3)
  it = pipeline.BatchIterator(stream, 4)
  starts = _starts(next(it) for _ in range(6))
  assert sorted(starts[:12]) == sorted(starts[12:]) == list(range(0, 48, 4))
  assert starts[:12] != starts[12:]
  other = pipeline.BatchIterator(pipeline.shuffled_stream([pipeline.Windows(d, m, 'train', SEQ)],
                                                          [1.0], seed=4), 4)
  assert _starts(next(other) for _ in range(3)) != starts[:12]


def test_position_is_global_across_process_counts(tmp_path):
  d, m = _dataset(tmp_path, 'a', [4 * 40 + 1])
  stream = pipeline.shuffled_stream([pipeline.Windows(d, m, 'train', SEQ)], [1.0], seed=0)
  one = pipeline.BatchIterator(stream, 8)
  whole = [next(one) for _ in range(5)]
  assert one.state() == {'global_batches': 5}
  # two processes starting at global batch 2 read the rest of the same batches, split in halves
  halves = [pipeline.BatchIterator(stream, 8, p, 2, start=2) for p in (0, 1)]
  for b in range(2, 5):
    got = np.concatenate([next(h) for h in halves])
    np.testing.assert_array_equal(got, whole[b])
  resumed = pipeline.BatchIterator(stream, 8)
  resumed.set_state({'global_batches': 3})
  np.testing.assert_array_equal(next(resumed), whole[3])
  with pytest.raises(UserError, match='not divisible by 3 processes'):
    pipeline.BatchIterator(stream, 8, 0, 3)


def test_mixture_follows_weights(tmp_path):
  a = _dataset(tmp_path, 'a', [4 * 50 + 1])
  b = _dataset(tmp_path, 'b', [4 * 50 + 1], first=10_000)
  sources = [pipeline.Windows(*a, 'train', SEQ), pipeline.Windows(*b, 'train', SEQ)]
  it = pipeline.BatchIterator(pipeline.shuffled_stream(sources, [3.0, 1.0], seed=0), 20)
  starts = _starts(next(it) for _ in range(10))
  from_b = sum(s >= 10_000 for s in starts)
  assert from_b == pytest.approx(len(starts) / 4, abs=5)
  again = pipeline.BatchIterator(pipeline.shuffled_stream(sources, [3.0, 1.0], seed=0), 20)
  assert _starts(next(again) for _ in range(10)) == starts


def test_eval_batches_are_the_first_windows(tmp_path):
  d, m = _dataset(tmp_path, 'a', [4 * 10 + 1])
  val = pipeline.Windows(d, m, 'validation', SEQ)
  batches = pipeline.eval_batches(val, 3, max_batches=100)
  assert len(batches) == 3 and batches[0].shape == (3, SEQ + 1)
  assert _starts(batches) == list(range(0, 36, 4))
  assert len(pipeline.eval_batches(val, 3, max_batches=2)) == 2
  with pytest.raises(UserError, match='validation split too small: .* 41 tokens, 10 windows of length 5, '
                                      'fewer than batch 11'):
    pipeline.eval_batches(val, 11, max_batches=1)

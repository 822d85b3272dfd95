"""ArrayRecord token shards: exact reads across record boundaries, and commit by rename."""
import os

import numpy as np
import pytest

from tokenformer_jax.data import shards


@pytest.mark.parametrize('vocab, dtype', [(2048, '<u2'), (65536, '<u2'), (65537, '<u4')])
def test_dtype_fits_the_vocabulary(vocab, dtype):
  assert shards.dtype_for(vocab) == np.dtype(dtype)


def test_any_window_reads_back_exactly(tmp_path):
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, 60000, size=n) for n in (5, 17, 1, 40, 23)]
  path = str(tmp_path / 'train-00000-of-00001.array_record')
  writer = shards.Writer(path, np.dtype('<u2'), record_tokens=8)
  for d in docs:
    writer.add(d)
  assert not os.path.exists(path)  # only under a temp name until closed
  entry = writer.close()
  stream = np.concatenate(docs)
  assert entry == {'file': os.path.basename(path), 'tokens': 86, 'documents': 5, 'records': 11,
                   'bytes': os.path.getsize(path)}
  assert os.listdir(tmp_path) == [os.path.basename(path)]
  reader = shards.Reader(path, entry['tokens'], '<u2', 8)
  for start in range(0, 86):
    for length in (1, 7, 8, 9, 86 - start):
      if start + length <= 86:
        got = reader.read(start, length)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, stream[start:start + length])


def test_abort_leaves_nothing(tmp_path):
  writer = shards.Writer(str(tmp_path / 's.array_record'), np.dtype('<u2'))
  writer.add(np.arange(10))
  writer.abort()
  assert os.listdir(tmp_path) == []

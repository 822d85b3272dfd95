"""Tests for tokenformer_jax.data: corpus reading, tokenizer, cache and grain pipelines."""

import json
import os
import random
import shutil

import ml_collections
import numpy as np
import pytest

from tokenformer_jax import corpus, data
from tokenformer_jax.errors import UserError


def _corpus_text(spec: str) -> str:
  """The corpus as one string, documents separated by a blank line."""
  return '\n\n'.join(corpus.read_documents(spec))


VOCAB = 256
VAL_FRACTION = 0.05


def _cfg(**overrides) -> ml_collections.ConfigDict:
  fields = dict(corpus='kjv', tokenizer='', vocab_size=VOCAB, val_fraction=VAL_FRACTION)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _synthetic_text(seed: int, num_lines: int = 400) -> str:
  """Varied enough for a 64-piece BPE vocabulary, small enough to train instantly."""
  rng = random.Random(seed)
  words = ['lorem', 'ipsum', 'dolor', 'sit', 'amet', 'consectetur', 'adipiscing', 'elit', 'sed',
           'do', 'eiusmod', 'tempor', 'incididunt', 'ut', 'labore', 'et', 'dolore', 'magna',
           'aliqua', 'quis', 'nostrud', 'exercitation', 'ullamco', 'laboris', 'nisi', 'zephyr']
  return '\n'.join(' '.join(rng.choice(words) for _ in range(rng.randint(3, 12))) + '.'
                   for _ in range(num_lines)) + '\n'


@pytest.fixture(scope='module')
def kjv_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('kjv_cache'))


@pytest.fixture(scope='module')
def kjv(kjv_cache):
  return data.prepare_corpus(_cfg(), kjv_cache)


@pytest.fixture
def text_files(tmp_path):
  """Two small text files (and a non-matching one) under tmp_path/texts."""
  texts = tmp_path / 'texts'
  texts.mkdir()
  (texts / 'b.txt').write_text(_synthetic_text(1))
  (texts / 'a.txt').write_text(_synthetic_text(0))
  (texts / 'notes.md').write_text('not included\n')
  return texts


# ---------------------------------------------------------------------------------------------
# Corpus text.


def test_kjv_text():
  text = _corpus_text('kjv')
  assert len(text) > 4_000_000
  assert text.startswith('# Genesis\n\nIn the beginning God created the heaven and the earth.\n')
  assert '\n\n# Exodus\n\n' in text
  assert text.count('\n# ') == 65  # 66 books, the first one starts the text.


def test_text_files_glob_sorted_and_deduplicated(text_files):
  a, b = (text_files / 'a.txt').read_text(), (text_files / 'b.txt').read_text()
  text = _corpus_text(f'{text_files}/b.txt, {text_files}/*.txt,{text_files}/a.txt')
  assert text == a.rstrip('\n') + '\n\n' + b.rstrip('\n')


@pytest.mark.parametrize('spec, match', [
    ('{d}/*.json', r'matches no files: .*\*\.json'),
    ('{d}/a.txt,{d}/missing.txt', r'not found: .*missing\.txt'),
    ('{d}/empty.txt', 'has no text'),
    ('  ', 'empty'),
])
def test_bad_corpus_raises(text_files, spec, match):
  (text_files / 'empty.txt').write_text(' \n\n  \n')
  with pytest.raises(UserError, match=match):
    _corpus_text(spec.format(d=text_files))
  with pytest.raises(UserError, match=match):
    data.prepare_corpus(_cfg(corpus=spec.format(d=text_files)), str(text_files / 'cache'))


# ---------------------------------------------------------------------------------------------
# prepare_corpus on the KJV.


def test_kjv_corpus(kjv):
  assert kjv.vocab_size == VOCAB == kjv.tokenizer.get_piece_size()
  assert kjv.eos_id == kjv.tokenizer.eos_id() == 1
  for tokens in (kjv.train_tokens, kjv.val_tokens):
    assert tokens.ndim == 1 and tokens.dtype == np.uint16
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable
  total = kjv.train_tokens.size + kjv.val_tokens.size
  assert kjv.val_tokens.size == pytest.approx(VAL_FRACTION * total, abs=1)
  assert int(np.max(kjv.train_tokens)) < VOCAB
  # One end-of-text per book, the last one ends the stream.
  all_tokens = np.concatenate([kjv.train_tokens, kjv.val_tokens])
  assert np.count_nonzero(all_tokens == kjv.eos_id) == 66
  assert all_tokens[-1] == kjv.eos_id
  assert np.count_nonzero(all_tokens == kjv.tokenizer.unk_id()) == 0


def test_kjv_tokens_round_trip(kjv):
  text = _corpus_text('kjv')
  head = kjv.tokenizer.decode(kjv.train_tokens[:2000].tolist())
  assert head.startswith('# Genesis\n\nIn the beginning God created')
  assert text.startswith(head)
  # A whole middle document decodes to exactly its text (book boundaries are eos ids).
  eos_at = np.flatnonzero(np.asarray(kjv.train_tokens) == kjv.eos_id)
  exodus = kjv.tokenizer.decode(kjv.train_tokens[eos_at[0] + 1:eos_at[1]].tolist())
  assert exodus.startswith('# Exodus\n\n')
  assert '\n\n' + exodus + '\n\n' in text


def test_cache_reused(kjv, kjv_cache, monkeypatch):
  del kjv  # Only for its side effect: the cache is filled.
  files = [os.path.join(kjv_cache, name) for name in ('tokenizer.model', 'tokens.bin',
                                                      'meta.json')]
  mtimes = [os.stat(f).st_mtime_ns for f in files]

  def fail(*args, **kwargs):
    raise AssertionError('cache was not reused')

  monkeypatch.setattr(corpus, 'train_tokenizer', fail)
  monkeypatch.setattr(data, '_tokenize', fail)
  again = data.prepare_corpus(_cfg(), kjv_cache)
  assert [os.stat(f).st_mtime_ns for f in files] == mtimes
  assert again.vocab_size == VOCAB
  assert sorted(os.listdir(kjv_cache)) == ['meta.json', 'tokenizer.model', 'tokens.bin']


def test_cache_rebuilt_when_vocab_changes(kjv, kjv_cache, tmp_path):
  cache = str(tmp_path / 'cache')
  shutil.copytree(kjv_cache, cache)
  with open(os.path.join(cache, 'meta.json')) as f:
    old_fingerprint = json.load(f)['fingerprint']
  bigger = data.prepare_corpus(_cfg(vocab_size=400), cache)
  assert bigger.vocab_size == 400 == bigger.tokenizer.get_piece_size()
  assert bigger.train_tokens.size < kjv.train_tokens.size
  with open(os.path.join(cache, 'meta.json')) as f:
    meta = json.load(f)
  assert meta['fingerprint'] != old_fingerprint
  assert meta['length'] == bigger.train_tokens.size + bigger.val_tokens.size
  assert not [name for name in os.listdir(cache) if name.startswith('.')]  # No temp files left.


def test_cache_without_meta_is_rebuilt(kjv, kjv_cache, tmp_path):
  cache = str(tmp_path / 'cache')
  shutil.copytree(kjv_cache, cache)
  os.remove(os.path.join(cache, 'meta.json'))  # As if killed before the meta was written.
  with open(os.path.join(cache, 'tokens.bin'), 'r+b') as f:
    f.truncate(100)
  rebuilt = data.prepare_corpus(_cfg(), cache)
  np.testing.assert_array_equal(rebuilt.train_tokens, kjv.train_tokens)  # Deterministic.


# ---------------------------------------------------------------------------------------------
# Tokenizer options and errors on small corpora.


def test_given_tokenizer_model(kjv_cache, text_files, tmp_path):
  model = str(tmp_path / 'kjv.model')
  shutil.copy(os.path.join(kjv_cache, 'tokenizer.model'), model)
  cache = str(tmp_path / 'cache')
  corpus = data.prepare_corpus(_cfg(corpus=f'{text_files}/*.txt', tokenizer=model,
                                    vocab_size=12345), cache)
  assert corpus.vocab_size == VOCAB
  with open(model, 'rb') as f1, open(os.path.join(cache, 'tokenizer.model'), 'rb') as f2:
    assert f1.read() == f2.read()
  text = (text_files / 'a.txt').read_text()
  assert corpus.tokenizer.decode(corpus.train_tokens[:300].tolist()) in text


@pytest.mark.parametrize('content', [b'', b'definitely not a model\n'])
def test_bad_tokenizer_model(text_files, tmp_path, content):
  model = tmp_path / 'bad.model'
  model.write_bytes(content)
  with pytest.raises(UserError, match=f'not a sentencepiece model: {model}'):
    data.prepare_corpus(_cfg(corpus=f'{text_files}/a.txt', tokenizer=str(model)),
                        str(tmp_path / 'cache'))


def test_missing_tokenizer_model(text_files, tmp_path):
  missing = str(tmp_path / 'nothing.model')
  with pytest.raises(UserError, match=f'tokenizer model not found: {missing}'):
    data.prepare_corpus(_cfg(corpus=f'{text_files}/a.txt', tokenizer=missing),
                        str(tmp_path / 'cache'))


def test_small_vocab_on_text_files(text_files, tmp_path):
  prepared = data.prepare_corpus(_cfg(corpus=f'{text_files}/*.txt', vocab_size=64),
                                 str(tmp_path / 'cache'))
  assert prepared.vocab_size == 64
  text = _corpus_text(f'{text_files}/*.txt')
  all_tokens = np.concatenate([prepared.train_tokens, prepared.val_tokens]).tolist()
  eos_at = all_tokens.index(prepared.eos_id)
  assert prepared.tokenizer.decode(all_tokens[:eos_at]) == text.split('\n\n')[0]
  assert all_tokens.count(prepared.eos_id) == 2  # One per file.


def test_byte_fallback_only_for_large_vocab():
  sentences = ['In the beginning God created the heaven and the earth.'] * 3
  assert not corpus.trainer_settings(sentences, 400)['byte_fallback']
  assert corpus.trainer_settings(sentences, 1024)['byte_fallback']
  with pytest.raises(UserError, match='has 94 distinct characters, so at least 97'):
    corpus.trainer_settings([''.join(chr(c) for c in range(33, 127))], 96)


@pytest.mark.parametrize('overrides, match', [
    (dict(vocab_size=32), 'vocab_size must be at least 64'),
    (dict(vocab_size=100_000), 'Vocabulary size too high'),
    (dict(val_fraction=0.0), r'val_fraction must be in \(0, 0.5\]'),
    (dict(val_fraction=0.6), r'val_fraction must be in \(0, 0.5\]'),
])
def test_bad_config_raises(text_files, tmp_path, overrides, match):
  with pytest.raises(UserError, match=match):
    data.prepare_corpus(_cfg(corpus=f'{text_files}/a.txt', **overrides), str(tmp_path / 'cache'))


# ---------------------------------------------------------------------------------------------
# train_iterator.


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _window_ids(batch_BxW: np.ndarray, tokens: np.ndarray, seq_len: int) -> list[int]:
  """Maps each row of a batch of arange-token windows back to its window index."""
  ids = []
  for row in batch_BxW:
    assert row[0] % seq_len == 0
    np.testing.assert_array_equal(row, tokens[row[0]:row[0] + seq_len + 1])
    ids.append(int(row[0]) // seq_len)
  return ids


def test_train_iterator_batches_are_token_windows(kjv):
  seq_len, batch = 32, 4
  it = data.train_iterator(kjv.train_tokens, seq_len, batch, seed=0)
  tokens = np.asarray(kjv.train_tokens)
  for batch_BxW in _take(it, 3):
    assert batch_BxW.shape == (batch, seq_len + 1) and batch_BxW.dtype == np.int32
    for row in batch_BxW:
      starts = np.flatnonzero(tokens[:-seq_len] == row[0])
      starts = starts[starts % seq_len == 0]
      assert any(np.array_equal(tokens[s:s + seq_len + 1], row) for s in starts)


def test_train_iterator_state_restore(kjv):
  it = data.train_iterator(kjv.train_tokens, 16, 8, seed=3)
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 4)
  fresh = data.train_iterator(kjv.train_tokens, 16, 8, seed=3)
  fresh.set_state(state)
  for want, got in zip(expected, _take(fresh, 4)):
    np.testing.assert_array_equal(want, got)


def test_train_iterator_seed_changes_order(kjv):
  a = next(data.train_iterator(kjv.train_tokens, 16, 8, seed=0))
  b = next(data.train_iterator(kjv.train_tokens, 16, 8, seed=1))
  assert not np.array_equal(a, b)


def test_train_iterator_processes_and_epochs():
  seq_len, batch, num_windows = 4, 3, 36  # 18 windows = 6 batches per process and epoch.
  tokens = np.arange(num_windows * seq_len + 1, dtype=np.uint16)
  epochs = {}
  for process in (0, 1):
    it = data.train_iterator(tokens, seq_len, batch, seed=7, process_index=process,
                             process_count=2)
    ids = [i for b in _take(it, 12) for i in _window_ids(b, tokens, seq_len)]
    epochs[process] = (ids[:18], ids[18:])
  for epoch in (0, 1):
    first, second = epochs[0][epoch], epochs[1][epoch]
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(num_windows))
  for process in (0, 1):
    assert epochs[process][0] != epochs[process][1]  # Reshuffled each epoch.
    assert set(epochs[process][0]) != set(epochs[process][1])  # Shards are dealt anew too.


def test_train_iterator_uneven_epochs_cross_batches():
  seq_len, batch, num_windows = 2, 4, 10
  tokens = np.arange(num_windows * seq_len + 1, dtype=np.uint16)
  it = data.train_iterator(tokens, seq_len, batch, seed=0)
  ids = [i for b in _take(it, 5) for i in _window_ids(b, tokens, seq_len)]
  assert sorted(ids[:10]) == list(range(10)) == sorted(ids[10:20])


def test_train_iterator_too_small_raises():
  tokens = np.arange(50, dtype=np.uint16)
  with pytest.raises(UserError, match='corpus too small: 3 windows of length 17 for batch 8'):
    data.train_iterator(tokens, 16, 8, seed=0)
  with pytest.raises(UserError, match='corpus too small: 1 windows of length 17 per process'):
    data.train_iterator(tokens, 16, 2, seed=0, process_index=1, process_count=2)


# ---------------------------------------------------------------------------------------------
# eval_batches.


def test_eval_batches(kjv):
  seq_len, batch = 32, 4
  batches = data.eval_batches(kjv.val_tokens, seq_len, batch, max_batches=3)
  assert len(batches) == 3
  tokens = np.asarray(kjv.val_tokens)
  for b, batch_BxW in enumerate(batches):
    assert batch_BxW.shape == (batch, seq_len + 1) and batch_BxW.dtype == np.int32
    for r, row in enumerate(batch_BxW):
      start = (b * batch + r) * seq_len
      np.testing.assert_array_equal(row, tokens[start:start + seq_len + 1])
  again = data.eval_batches(kjv.val_tokens, seq_len, batch, max_batches=3)
  for want, got in zip(batches, again):
    np.testing.assert_array_equal(want, got)


def test_eval_batches_drops_remainder_and_caps():
  tokens = np.arange(4 * 10 + 1, dtype=np.uint16)  # 10 windows of length 5.
  assert len(data.eval_batches(tokens, 4, 3, max_batches=100)) == 3
  assert len(data.eval_batches(tokens, 4, 3, max_batches=2)) == 2
  with pytest.raises(UserError, match='41 tokens give 10 windows of length 5, fewer than batch 11'):
    data.eval_batches(tokens, 4, 11, max_batches=1)

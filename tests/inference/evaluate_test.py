"""Evaluation: windows cover every token once; loss, perplexity and bits per byte are exact."""
import math

import jax
import numpy as np
import pytest

from tests.helpers import small_config
from tokenformer_jax.data import pipeline, shards
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import evaluate
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step as step_lib

VOCAB = 256
TEXT = 'In the beginning God created the heaven and the earth — «é» ' * 3


class CharTokenizer:
  """One id per character (so tokens ≠ UTF-8 bytes for non-ASCII text); id 0 is end-of-text."""
  vocab_size = 200
  eos_id = 0

  def encode(self, text):
    return [ord(ch) % 199 + 1 for ch in text]

  def decode(self, ids):
    return ''.join(chr(i + 64) for i in ids if i)


@pytest.fixture(scope='module')
def setup():
  cfg = small_config()
  cfg.train.batch_size = 4
  cfg.data.seq_len = 32
  spec = state_lib.make_spec(cfg, VOCAB, sharding.make_mesh(cfg.mesh))
  return cfg, spec, state_lib.init_state(spec, cfg)['params']


def test_windows_predict_every_token_once():
  windows_RxW, mask_RxT = evaluate.windows(np.arange(11), 4)
  np.testing.assert_array_equal(windows_RxW, [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 0, 0]])
  np.testing.assert_array_equal(mask_RxT, [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
  np.testing.assert_array_equal(windows_RxW[:, 1:][mask_RxT > 0], np.arange(1, 11))
  with pytest.raises(UserError, match='nothing to evaluate'):
    evaluate.windows(np.arange(1), 4)


def test_uniform_model_gives_log_vocab_and_bits_per_byte(setup):
  cfg, spec, params = setup
  # a zero embedding makes every logit 0: exactly ln(V) nats per token
  zero = jax.tree.map(lambda x: x, params)
  zero['embedding'] = jax.numpy.zeros_like(params['embedding'])
  result = evaluate.evaluate_text(spec, cfg, zero, CharTokenizer(), TEXT)
  assert result.tokens == len(TEXT) and result.bytes == len(TEXT.encode('utf-8')) > len(TEXT)
  assert result.loss == pytest.approx(math.log(VOCAB), rel=1e-6)
  assert result.perplexity == pytest.approx(VOCAB, rel=1e-5)
  assert result.bits_per_byte == pytest.approx(math.log2(VOCAB) * len(TEXT) / result.bytes, rel=1e-6)


def test_text_loss_equals_direct_cross_entropy(setup):
  cfg, spec, params = setup
  tok = CharTokenizer()
  result = evaluate.evaluate_text(spec, cfg, params, tok, TEXT)
  tokens = np.array([tok.eos_id] + tok.encode(TEXT))
  T = cfg.data.seq_len
  windows = [tokens[start:start + T + 1] for start in range(0, len(tokens) - 1, T)]  # fresh context each
  padded = np.stack([np.pad(w, (0, T + 1 - len(w))) for w in windows])
  forward = jax.jit(lambda p, t: state_lib.merge(spec, p)(t))
  logits = np.asarray(forward(params, padded[:, :-1]), np.float64)
  nats = 0.0
  for window, row in zip(windows, logits):
    row = row[:len(window) - 1]
    log_z = row.max(-1) + np.log(np.sum(np.exp(row - row.max(-1, keepdims=True)), -1))
    nats += np.sum(log_z - row[np.arange(len(row)), window[1:]])
  assert result.loss == pytest.approx(nats / (len(tokens) - 1), rel=1e-5)


def test_validation_split_equals_training_eval(setup, tmp_path):
  cfg, spec, params = setup
  val_tokens = np.random.default_rng(0).integers(1, 200, size=1000)
  writer = shards.Writer(str(tmp_path / 'validation.array_record'), np.dtype('<u2'))
  writer.add(val_tokens)
  entry = writer.close()
  m = {'dtype': '<u2', 'record_tokens': shards.RECORD_TOKENS, 'splits': {'validation': {'shards': [entry]}}}
  validation = pipeline.Windows(str(tmp_path), m, 'validation', cfg.data.seq_len)
  result = evaluate.evaluate_split(spec, cfg, params, CharTokenizer(), validation)
  batches = pipeline.eval_batches(validation, cfg.train.batch_size, cfg.train.eval_batches)
  expected = step_lib.mean_loss(step_lib.make_eval_step(spec, cfg), spec, cfg, params, batches)
  assert result.loss == pytest.approx(expected, rel=1e-6)
  targets = np.concatenate([b[:, 1:].reshape(-1) for b in batches]).tolist()
  assert result.tokens == len(targets)
  assert result.bytes == len(CharTokenizer().decode(targets).encode('utf-8'))


def test_unreadable_file(tmp_path):
  (tmp_path / 'latin1.txt').write_bytes('café'.encode('latin-1'))
  with pytest.raises(UserError, match='not UTF-8'):
    evaluate.read_text(str(tmp_path / 'latin1.txt'))
  with pytest.raises(UserError, match='cannot read --eval_file'):
    evaluate.read_text(str(tmp_path / 'missing.txt'))

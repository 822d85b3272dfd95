"""End-to-end training on the bundled corpus: learning, exact stop/resume, gradient accumulation, the
time breakdown and MFU of each log window."""
import json
import os

import jax
import numpy as np
import pytest

from tests.helpers import small_config
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.telemetry import step_clock
from tokenformer_jax.training import loop


def test_training_lowers_validation_loss(data_cache, tmp_path):
  c = small_config(data_cache)
  c.train.steps = 150
  c.train.eval_every = 50
  c.train.sample_tokens = 8
  c.train.sample_prompt = 'And God said'
  result = loop.train(c, str(tmp_path))
  first, last = result.val_losses[50], result.val_losses[150]
  # Measured: ≈5.47 at step 50 and ≈4.89 at step 150, against ln(512) ≈ 6.24 for a uniform guess.
  assert last < np.log(512) - 1.0, result.val_losses
  assert last < first - 0.3, result.val_losses
  assert result.sample.startswith('And God said')
  assert (tmp_path / 'metrics.jsonl').exists()
  assert store.manager(str(tmp_path)).latest_step() == 150


@pytest.mark.slow
def test_stop_and_resume_is_exact(data_cache, tmp_path):
  c = small_config(data_cache)
  whole = loop.train(c, str(tmp_path / 'whole'))
  first = loop.train(c, str(tmp_path / 'split'), stop_at_step=10)
  assert first.step == 10
  second = loop.train(c, str(tmp_path / 'split'))
  assert second.step == 20
  assert {**first.train_losses, **second.train_losses} == whole.train_losses
  assert second.val_losses[20] == whole.val_losses[20]
  for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(second.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_gradient_accumulation_matches_one_big_batch(data_cache, tmp_path):
  c = small_config(data_cache)
  c.train.steps = 2
  c.train.eval_every = 2
  single = loop.train(c, str(tmp_path / 'one'))
  c.train.grad_accum = 4
  accumulated = loop.train(c, str(tmp_path / 'four'))
  for step, loss in single.train_losses.items():
    assert accumulated.train_losses[step] == pytest.approx(loss, rel=1e-5)
  for a, b in zip(jax.tree.leaves(single.state['params']), jax.tree.leaves(accumulated.state['params'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=5e-5)


@pytest.mark.slow
def test_a_diverged_run_stops_before_saving_and_keeps_the_good_checkpoints(data_cache, tmp_path):
  c = small_config(data_cache)
  c.train.steps = 4
  loop.train(c, str(tmp_path))
  mngr = store.manager(str(tmp_path))
  c.train.steps, c.train.checkpoint_every, c.train.log_every = 30, 1, 1000
  c.train.keep_checkpoints = 2
  c.optimizer.lr = 1e30
  with pytest.raises(UserError, match=r'not finite at step (\d+); stopped before saving \(the last '
                                      r'checkpoint, step \d+, is kept\)') as err:
    loop.train(c, str(tmp_path))
  bad = int(str(err.value).split('at step ')[1].split(';')[0])
  kept = store.manager(str(tmp_path)).all_steps()
  assert 4 < bad <= 30 and max(kept) == bad - 1 and len(kept) == 2  # nothing saved from step `bad` on
  restored = store.restore(mngr, max(kept), *_targets(c, mngr, max(kept)))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored))  # a finite state


def _targets(c, mngr, step):
  from tokenformer_jax.runtime import sharding
  from tokenformer_jax.training import state as state_lib
  meta = store.read_meta(mngr, step)
  return (state_lib.abstract_targets(state_lib.make_spec(c, meta['vocab_size'], sharding.make_mesh(c.mesh))),)


@pytest.mark.slow
def test_each_window_breaks_down_its_time_and_logs_mfu_against_the_given_peak(data_cache, tmp_path,
                                                                              capsys):
  c = small_config(data_cache)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 2, 4
  c.train.peak_tflops = 0.5
  loop.train(c, str(tmp_path))
  assert 'mfu=' in capsys.readouterr().err   # the progress bar, beside loss and tokens/s
  with open(tmp_path / 'metrics.jsonl') as f:
    windows = [r for r in map(json.loads, f) if 'time_window_s' in r]
  assert [r['step'] for r in windows] == [2, 4, 4]   # two log windows, then the end's eval and save
  for r in windows:
    parts = r['time_step_s'] + sum(r[f'time_{b}_s'] for b in step_clock.BUCKETS)
    assert parts == pytest.approx(r['time_window_s'])
  assert windows[0]['time_startup_s'] > 0 and windows[1]['time_startup_s'] == 0
  assert windows[1]['time_eval_s'] > 0   # the evaluation at step 2 falls into the second window
  assert windows[2]['time_checkpoint_s'] > 0 and windows[2]['time_eval_s'] > 0
  devices = jax.device_count()
  for r in windows[:2]:
    assert r['mfu'] == pytest.approx(r['gflops_per_s'] * 1e9 / (0.5e12 * devices))
    assert r['tokens_per_s'] == pytest.approx(
        2 * c.train.batch_size * c.data.seq_len / (r['time_step_s'] + r['time_data_s']))
  assert 0 < windows[-1]['goodput'] < 1


@pytest.fixture(scope='module')
def no_validation_set(data_cache, tmp_path_factory):
  """The bundled corpus prepared with the defaults (no validation split) and a one-verse dataset, both
  with the tokenizer of `data_cache` (whose own dataset has both splits)."""
  from tokenformer_jax.data import dataset, build
  c = small_config(data_cache)
  tok = dataset.open_run_data(c.data, str(tmp_path_factory.mktemp('w'))).tokenizer
  root = tmp_path_factory.mktemp('prepared')
  tok_file = root / tok.file_name
  tok_file.write_bytes(tok.file_bytes)
  (root / 'verse.txt').write_text('In the beginning God created the heaven and the earth.\n')
  for name, inputs in [('kjv', 'kjv'), ('verse', str(root / 'verse.txt'))]:
    build.run(build.Options(inputs=inputs, output=str(root / name), tokenizer=str(tok_file)),
                log=lambda _: None)
  return str(root / 'kjv'), str(root / 'verse')


def _short(c):
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 2, 4
  return c


@pytest.mark.slow
def test_a_dataset_without_validation_trains_without_evaluating(data_cache, no_validation_set, tmp_path,
                                                                 caplog):
  c = _short(small_config(data_cache))
  c.data.prepared = no_validation_set[0]
  result = loop.train(c, str(tmp_path))
  assert result.step == 4 and sorted(result.train_losses) == [2, 4] and result.val_losses == {}
  assert caplog.text.count('training without evaluation') == 1, caplog.text
  assert 'prepared without a validation split' in caplog.text
  with open(tmp_path / 'metrics.jsonl') as f:
    assert not [r for r in map(json.loads, f) if 'val_loss' in r]
  from tokenformer_jax.inference import evaluate
  with pytest.raises(UserError, match='nothing to evaluate: .*prepared without a validation split.*'
                                      'give --eval_file=FILE or data.validation=DIR'):
    evaluate.run(c, str(tmp_path))


@pytest.mark.slow
def test_data_validation_names_a_separate_dataset(data_cache, no_validation_set, tmp_path):
  c = _short(small_config(data_cache))
  c.data.prepared, c.data.validation = no_validation_set[0], data_cache
  result = loop.train(c, str(tmp_path))
  assert sorted(result.val_losses) == [2, 4] and all(np.isfinite(list(result.val_losses.values())))


@pytest.mark.slow
def test_a_small_validation_set_is_still_refused(data_cache, no_validation_set, tmp_path):
  c = _short(small_config(data_cache))
  c.data.prepared, c.data.validation = no_validation_set
  with pytest.raises(UserError, match=r'validation split too small: .*verse \(train \+ validation\) has '
                                      r'\d+ tokens, 0 windows of length 65, fewer than batch 8'):
    loop.train(c, str(tmp_path))
  assert not (tmp_path).exists() or not os.listdir(tmp_path)

"""Metrics: JSON lines plus TensorBoard scalars that TensorBoard's own reader reads back; the writer
loads without PyTorch; a resumed run's records of the steps it trains again replace the earlier ones
(JSON lines and TensorBoard) and goes on with the same Weights & Biases run (offline: no network)."""
import glob
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, small_config
from tokenformer_jax.errors import UserError
from tokenformer_jax.telemetry import metrics
from tokenformer_jax.telemetry.metrics import MetricsWriter
from tokenformer_jax.training import loop


def _tensorboard(folder):
  """The event files under `folder` as TensorBoard reads them: its own reader, which purges the events
  a later session start hides."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  accumulator = EventAccumulator(str(folder))
  accumulator.Reload()
  return accumulator


def _shown_scalars(folder, tag):
  """(step, value) of `tag` as TensorBoard shows them."""
  return [(e.step, e.value) for e in _tensorboard(folder).Scalars(tag)]


def test_writes_json_lines_and_tensorboard_scalars(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(5, {'loss': 2.5, 'lr': 0.125})
  writer.write(10, {'loss': 1.5})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  assert [(r['step'], r['loss'], r['attempt']) for r in records] == [(5, 2.5, 1), (10, 1.5, 1)]
  assert records[0]['lr'] == 0.125
  assert sorted(_tensorboard(tmp_path / 'tensorboard').Tags()['scalars']) == ['loss', 'lr']
  assert _shown_scalars(tmp_path / 'tensorboard', 'loss') == [(5, 2.5), (10, 1.5)]
  assert _shown_scalars(tmp_path / 'tensorboard', 'lr') == [(5, 0.125)]


def test_an_attempt_hides_in_tensorboard_the_steps_it_trains_again(tmp_path):
  first = MetricsWriter(str(tmp_path), start_step=0)
  for step in (1, 2, 3, 4):
    first.write(step, {'loss': float(step)})
  first.close()
  second = MetricsWriter(str(tmp_path), start_step=2)   # trains steps 3, 4, ... again
  second.write(3, {'loss': 30.0})
  second.close()
  assert _shown_scalars(tmp_path / 'tensorboard', 'loss') == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_metrics_do_not_import_torch(tmp_path):
  pytest.importorskip('torch')
  probe = ('import sys\n'
           'from tokenformer_jax.telemetry.metrics import MetricsWriter\n'
           f'MetricsWriter({str(tmp_path)!r}).close()\n'
           'assert "torch" not in sys.modules, "the TensorBoard writer pulled in torch"\n'
           'import torch\n'                                   # and torch still imports afterwards
           'print(torch.ones(2).sum().item())\n')
  proc = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == '2.0'


def _wandb_runs(workdir):
  """{offline run folder: its .wandb file's bytes} under WORKDIR/wandb/."""
  runs = {}
  for folder in sorted(glob.glob(os.path.join(workdir, 'wandb', 'offline-run-*'))):
    (log,) = glob.glob(os.path.join(folder, 'run-*.wandb'))
    with open(log, 'rb') as f:
      runs[folder] = f.read()
  return runs


@pytest.mark.slow
def test_a_resumed_run_logs_to_the_same_offline_wandb_run(data_cache, tmp_path):
  pytest.importorskip('wandb')
  c = small_config(data_cache)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 4, 2
  c.metrics.wandb_project, c.metrics.wandb_mode = 'tokenformer-test', 'offline'
  loop.train(c, str(tmp_path), stop_at_step=2)
  run_id = (tmp_path / 'wandb_run_id').read_text().strip()
  loop.train(c, str(tmp_path))
  assert (tmp_path / 'wandb_run_id').read_text().strip() == run_id
  runs = _wandb_runs(str(tmp_path))
  assert len(runs) == 2 and all(folder.endswith('-' + run_id) for folder in runs)   # one W&B run
  for data in runs.values():   # the history reached W&B's log: metric names and the config
    assert b'loss' in data and b'time_step_s' in data and b'goodput' in data and b'n_ffn' in data


@pytest.mark.slow
def test_a_wandb_project_without_wandb_is_refused_before_anything_is_written(data_cache, tmp_path,
                                                                              monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)   # as if it were not installed
  c = small_config(data_cache)
  c.metrics.wandb_project = 'p'
  with pytest.raises(UserError, match=r"needs the wandb package: pip install 'tokenformer_jax\[wandb\]'"):
    loop.train(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_a_run_resumed_from_an_earlier_checkpoint_keeps_one_record_per_step_the_later_attempts(
    data_cache, tmp_path):
  c = small_config(data_cache)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 8, 2, 4, 4
  first = loop.train(c, str(tmp_path))                           # attempt 1: steps 1-8
  second = loop.train(c, str(tmp_path), restore_step=4, stop_at_step=6)   # attempt 2: 5-6, stops
  kept = metrics.kept_records(str(tmp_path))
  losses = [(r['step'], r['attempt'], r['loss']) for r in kept if 'loss' in r]
  assert losses == [(2, 1, first.train_losses[2]), (4, 1, first.train_losses[4]),
                    (6, 2, second.train_losses[6])]
  assert [(r['step'], r['attempt']) for r in kept if 'val_loss' in r] == [(4, 1), (6, 2)]
  assert all(r['step'] <= 6 for r in kept)   # attempt 1's step 8 was rolled back
  with open(tmp_path / 'metrics.jsonl') as f:   # all of it is still in the file, told apart
    raw = [json.loads(line) for line in f]
  assert [(r['event'], r['step'], r['attempt']) for r in raw if 'event' in r] == [('start', 0, 1),
                                                                                  ('start', 4, 2)]
  assert sorted(r['attempt'] for r in raw if r.get('step') == 6 and 'loss' in r) == [1, 2]
  assert _shown_scalars(tmp_path / 'tensorboard', 'loss') == [
      (2, pytest.approx(first.train_losses[2])), (4, pytest.approx(first.train_losses[4])),
                   (6, pytest.approx(second.train_losses[6]))]


def test_records_written_before_attempts_were_numbered_count_as_attempt_zero(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps({'step': s, 'loss': float(s)}) + '\n'
                                                  for s in (1, 2, 3, 4)))
  writer = MetricsWriter(str(tmp_path), start_step=2)
  writer.write(3, {'loss': 30.0})
  writer.close()
  assert [(r['step'], r.get('attempt', 0), r['loss']) for r in metrics.kept_records(str(tmp_path))] == [
      (1, 0, 1.0), (2, 0, 2.0), (3, 1, 30.0)]


def test_a_half_written_last_line_does_not_swallow_the_next_attempts_start(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text(json.dumps({'step': 2, 'loss': 2.0, 'attempt': 1}) + '\n'
                                          + json.dumps({'step': 4, 'loss': 4.0, 'attempt': 1}) + '\n'
                                          + '{"step": 6, "lo')   # killed while writing step 6
  writer = MetricsWriter(str(tmp_path), start_step=2)
  writer.write(3, {'loss': 30.0})
  writer.close()
  assert [(r['step'], r['attempt']) for r in metrics.kept_records(str(tmp_path))] == [(2, 1), (3, 2)]

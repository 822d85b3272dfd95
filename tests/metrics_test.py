"""Metrics: JSON lines plus TensorBoard scalars that read back; tensorboardX loads without PyTorch; a
resumed run goes on with the same Weights & Biases run (offline: no network)."""
import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import ROOT, small_config
from tokenformer_jax import train
from tokenformer_jax.errors import UserError
from tokenformer_jax.metrics import MetricsWriter


def _event_scalars(folder):
  """(step, tag, value) of every scalar in the TFRecord event files under `folder`."""
  from tensorboardX.proto import event_pb2
  found = []
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      data = f.read()
    at = 0
    while at < len(data):
      (length,) = struct.unpack('<Q', data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return found


def test_writes_json_lines_and_tensorboard_scalars(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(5, {'loss': 2.5, 'lr': 0.125})
  writer.write(10, {'loss': 1.5})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    records = [json.loads(line) for line in f]
  assert [(r['step'], r['loss']) for r in records] == [(5, 2.5), (10, 1.5)]
  assert records[0]['lr'] == 0.125
  assert sorted(_event_scalars(tmp_path / 'tensorboard')) == [
      (5, 'loss', 2.5), (5, 'lr', 0.125), (10, 'loss', 1.5)]


def test_metrics_do_not_import_torch(tmp_path):
  pytest.importorskip('torch')
  probe = ('import sys\n'
           'from tokenformer_jax.metrics import MetricsWriter\n'
           f'MetricsWriter({str(tmp_path)!r}).close()\n'
           'assert "torch" not in sys.modules, "tensorboardX pulled in torch"\n'
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


def test_a_resumed_run_logs_to_the_same_offline_wandb_run(data_cache, tmp_path):
  pytest.importorskip('wandb')
  c = small_config(data_cache)
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 4, 2, 4, 2
  c.metrics.wandb_project, c.metrics.wandb_mode = 'tokenformer-test', 'offline'
  train.train(c, str(tmp_path), stop_at_step=2)
  run_id = (tmp_path / 'wandb_run_id').read_text().strip()
  train.train(c, str(tmp_path))
  assert (tmp_path / 'wandb_run_id').read_text().strip() == run_id
  runs = _wandb_runs(str(tmp_path))
  assert len(runs) == 2 and all(folder.endswith('-' + run_id) for folder in runs)   # one W&B run
  for data in runs.values():   # the history reached W&B's log: metric names and the config
    assert b'loss' in data and b'time_step_s' in data and b'goodput' in data and b'n_ffn' in data


def test_a_wandb_project_without_wandb_is_refused_before_anything_is_written(data_cache, tmp_path,
                                                                              monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)   # as if it were not installed
  c = small_config(data_cache)
  c.metrics.wandb_project = 'p'
  with pytest.raises(UserError, match=r"needs the wandb package: pip install 'tokenformer_jax\[wandb\]'"):
    train.train(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()

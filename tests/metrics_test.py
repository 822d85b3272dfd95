"""Metrics: JSON lines plus TensorBoard scalars that read back; tensorboardX loads without PyTorch."""
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import ROOT
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

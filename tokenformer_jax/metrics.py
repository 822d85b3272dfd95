"""Metrics to WORKDIR/metrics.jsonl and TensorBoard event files; only process 0 writes."""
import json
import os
import sys
import time

import jax


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  Where torch is installed, tensorboardX imports it (only to accept torch tensors, which we never
  pass): 2.5-3.5 s at the start of every training process. A None entry in sys.modules makes that
  import fail at once, and tensorboardX falls back to numpy; the entry is removed again, so a later
  `import torch` works as usual. A process that already imported torch is left as it is."""
  block = 'torch' not in sys.modules
  if block:
    sys.modules['torch'] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block and sys.modules.get('torch', 0) is None:
      del sys.modules['torch']
  return SummaryWriter


class MetricsWriter:
  """Appends one JSON object per record, and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    SummaryWriter = _summary_writer_class()
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'time': time.time(), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for name, value in scalars.items():
      self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()

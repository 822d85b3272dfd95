"""Metrics to WORKDIR/metrics.jsonl and TensorBoard event files; only process 0 writes."""
import json
import os
import time

import jax


class MetricsWriter:
  """Appends one JSON object per record, and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    if not self.enabled:
      return
    from tensorboardX import SummaryWriter  # heavy import, only where it is used
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

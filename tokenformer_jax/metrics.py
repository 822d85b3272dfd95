"""Metrics sinks behind one writer: WORKDIR/metrics.jsonl, TensorBoard event files, and optionally
Weights & Biases; only process 0 writes."""
import json
import os
import secrets
import sys
import time

import jax

from tokenformer_jax.errors import UserError


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


class JsonlSink:
  """WORKDIR/metrics.jsonl: one JSON object per record, flushed as written (what sweeps read back)."""

  def __init__(self, workdir: str):
    self._file = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')

  def write(self, step: int, scalars: dict) -> None:
    self._file.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardSink:
  """WORKDIR/tensorboard/: event files TensorBoard reads, written without TensorFlow."""

  def __init__(self, workdir: str):
    self._writer = _summary_writer_class()(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: dict) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, step)

  def close(self) -> None:
    self._writer.close()


class WandbSink:
  """A Weights & Biases run (metrics.wandb_project). Its id is kept in WORKDIR/wandb_run_id, so a resumed
  run goes on logging to the same W&B run; the local files go to WORKDIR/wandb/ ('offline' mode needs no
  network: `wandb sync WORKDIR/wandb/offline-run-*` uploads them later)."""

  def __init__(self, workdir: str, m, run_config: dict | None):
    wandb = _import_wandb()
    id_path = os.path.join(workdir, RUN_ID_FILE)
    if os.path.exists(id_path):
      with open(id_path, encoding='utf-8') as f:
        run_id = f.read().strip()
    else:
      run_id = secrets.token_hex(6)   # W&B ids: lower-case letters and digits
      with open(id_path + '.tmp', 'w', encoding='utf-8') as f:
        f.write(run_id + '\n')
      os.replace(id_path + '.tmp', id_path)
    try:
      self._run = wandb.init(project=m.wandb_project, entity=m.wandb_entity or None,
                             name=m.wandb_name or os.path.basename(os.path.abspath(workdir)),
                             id=run_id, resume='allow', dir=workdir, mode=m.wandb_mode,
                             config=run_config, settings=wandb.Settings(console='off', quiet=True))
    except wandb.errors.Error as e:
      raise UserError(f'Weights & Biases (metrics.wandb_project={m.wandb_project!r}): '
                      f'{str(e).splitlines()[0]} (metrics.wandb_mode=offline needs no network)') from e

  def write(self, step: int, scalars: dict) -> None:
    self._run.log(scalars, step=step)

  def close(self) -> None:
    self._run.finish()


RUN_ID_FILE = 'wandb_run_id'


def _import_wandb():
  try:
    import wandb
    import wandb.errors
  except ImportError as e:
    raise UserError("metrics.wandb_project needs the wandb package: pip install 'tokenformer_jax[wandb]'"
                    ) from e
  return wandb


def check(m) -> None:
  """A W&B project needs wandb installed: refused before the run writes anything."""
  if m.wandb_project:
    _import_wandb()


class MetricsWriter:
  """Every record to every sink (JSON lines, TensorBoard, and W&B when metrics.wandb_project is set);
  only process 0 writes."""

  def __init__(self, workdir: str, m=None, run_config: dict | None = None):
    self.enabled = jax.process_index() == 0
    self._sinks = []
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._sinks = [JsonlSink(workdir), TensorBoardSink(workdir)]
    if m is not None and m.wandb_project:
      self._sinks.append(WandbSink(workdir, m, run_config))

  def write(self, step: int, scalars: dict) -> None:
    step, scalars = int(step), {k: float(v) for k, v in scalars.items()}
    for sink in self._sinks:
      sink.write(step, scalars)

  def close(self) -> None:
    for sink in self._sinks:
      sink.close()
    self._sinks = []

"""Metrics sinks behind one writer: WORKDIR/metrics.jsonl, TensorBoard event files, and optionally
Weights & Biases; only process 0 writes.

A resumed run trains again the steps after its checkpoint, so the workdir's logs can hold two records of
one step. Each start of training in a workdir is an attempt: metrics.jsonl gets a 'start' record (the
attempt's number and the step it starts from) and every record carries its attempt's number, so
`kept_records` keeps, of each step, only the records no later attempt trained again or rolled back.
TensorBoard is told the same with its own mechanism (the writer's purge_step: events at or after the
first step trained again are hidden). W&B keeps the earlier attempt's records of the steps trained
again: it drops a record whose step is older than the last one it has.
"""
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
  pass), seconds at the start of every training process (docs/performance.md). A None entry in sys.modules makes that
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


FILE = 'metrics.jsonl'


def open_for_append(path: str):
  """`path` opened to append JSON lines, after a newline if a killed writer left its last line half
  written (else the first new record would be glued to it, and both lost)."""
  with open(path, 'ab+') as f:
    f.seek(0, os.SEEK_END)
    if f.tell():
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b'\n':
        f.write(b'\n')
  return open(path, 'a', encoding='utf-8')


class JsonlSink:
  """WORKDIR/metrics.jsonl: one JSON object per record, flushed as written (what sweeps read back),
  each with its attempt's number; an attempt that trains starts with its 'start' record."""

  def __init__(self, workdir: str, attempt: int, start_step: int | None):
    self._attempt = attempt
    self._file = open_for_append(os.path.join(workdir, FILE))
    if start_step is not None:
      self._append({'event': 'start', 'step': int(start_step), 'time': time.time(), 'attempt': attempt})

  def _append(self, record: dict) -> None:
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def write(self, step: int, scalars: dict) -> None:
    self._append({'step': step, 'time': time.time(), 'attempt': self._attempt, **scalars})

  def close(self) -> None:
    self._file.close()


class TensorBoardSink:
  """WORKDIR/tensorboard/: event files TensorBoard reads, written without TensorFlow. An attempt that
  starts at step S hides the events of earlier attempts from step S + 1 on (TensorBoard's purge on a
  session start), the steps it trains again."""

  def __init__(self, workdir: str, start_step: int | None):
    purge = None if start_step is None else int(start_step) + 1
    self._writer = _summary_writer_class()(os.path.join(workdir, 'tensorboard'), purge_step=purge)

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


def _read(path: str) -> list[dict]:
  """The JSON lines of `path`; a half-written line (a killed run) is skipped."""
  records = []
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return records


def _last_attempt(path: str) -> int:
  """The attempt number of the last record of metrics.jsonl (0: none, or written before attempts)."""
  if not os.path.exists(path):
    return 0
  with open(path, 'rb') as f:
    f.seek(max(0, os.path.getsize(path) - 65536))   # the last records are enough
    lines = f.read().splitlines()
  for line in reversed(lines):
    try:
      return int(json.loads(line).get('attempt', 0))
    except (ValueError, AttributeError):   # a half-written line, or the cut first one
      continue
  return 0


def kept_records(workdir: str) -> list[dict]:
  """WORKDIR/metrics.jsonl's records that still describe the run, in order, without the start records.

  A record of step s is dropped when a later attempt started from a step before s: that attempt
  trained step s again (or rolled it back, with --restore_step). So each step keeps the records of the
  last attempt that reached it. Records written before attempts were numbered count as attempt 0."""
  records = _read(os.path.join(workdir, FILE))
  starts = {r['attempt']: r['step'] for r in records if r.get('event') == 'start'}
  keep_through = {}   # attempt -> the last step no later attempt went back over
  for attempt in {r.get('attempt', 0) for r in records}:
    keep_through[attempt] = min((s for a, s in starts.items() if a > attempt), default=float('inf'))
  return [r for r in records
          if r.get('event') != 'start' and r['step'] <= keep_through[r.get('attempt', 0)]]


class MetricsWriter:
  """Every record to every sink (JSON lines, TensorBoard, and W&B when metrics.wandb_project is set);
  only process 0 writes. `start_step`: the step this attempt trains from (None: it trains nothing)."""

  def __init__(self, workdir: str, m=None, run_config: dict | None = None,
               start_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self._sinks = []
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    attempt = _last_attempt(os.path.join(workdir, FILE)) + 1
    self._sinks = [JsonlSink(workdir, attempt, start_step), TensorBoardSink(workdir, start_step)]
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

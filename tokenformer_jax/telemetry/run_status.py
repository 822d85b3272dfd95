"""WORKDIR/status: how the last training command on a workdir ended, for whoever started it.

Whoever starts a run through a scheduler often never sees its exit status (`sbatch` returns at
submission), so the run leaves it in its workdir as one JSON object:

  {"status": "done" | "preempted" | "interrupted" | "failed", "exit_status": N, "time": unix seconds}

Process 0 writes it through a temporary file and a rename, so a reader never sees half of one. It is
written only into a workdir that exists, and never by a run refused before training (bad input, a held
workdir, another model's checkpoint): such a run leaves the workdir as it was.
"""
import json
import os
import tempfile
import time

import jax

from tokenformer_jax.runtime.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED

FILE = 'status'
_WORDS = {0: 'done', EXIT_PREEMPTED: 'preempted', EXIT_INTERRUPTED: 'interrupted'}


def word(exit_status: int) -> str:
  """'done', 'preempted', 'interrupted' or 'failed' for a training command's exit status."""
  return _WORDS.get(exit_status, 'failed')


def write(workdir: str, exit_status: int) -> None:
  """Records the outcome (process 0 only; nothing if the workdir does not exist)."""
  if jax.process_index() != 0 or not os.path.isdir(workdir):
    return
  record = {'status': word(exit_status), 'exit_status': exit_status, 'time': time.time()}
  fd, tmp = tempfile.mkstemp(dir=workdir, prefix=f'.{FILE}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      json.dump(record, f)
    os.replace(tmp, os.path.join(workdir, FILE))
  except BaseException:
    os.unlink(tmp)
    raise


def read(workdir: str) -> dict | None:
  """The recorded outcome, or None when the workdir has none (never ran, running, or killed)."""
  try:
    with open(os.path.join(workdir, FILE), encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None

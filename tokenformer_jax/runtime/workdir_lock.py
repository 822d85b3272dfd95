"""One run per workdir: a lock file taken before anything is written, released when the run ends.

`WORKDIR/.lock` holds the holder's host, pid and start time; it is created with O_EXCL, so of two runs
started at once exactly one gets it. A lock left by a run that died (kill -9, a lost node) is stale:
on the same host its pid is gone; from another host its heartbeat (the file's modification time,
refreshed while the run lives) is older than STALE_S. A stale lock is taken over, and the run says so.
In a multi-process run process 0 holds it for all, and every process learns the outcome. A prepare
locks its output folder the same way, from its one driver process (`hold_here`).
"""
import contextlib
import json
import os
import socket
import threading
import time

import numpy as np
from absl import logging

from tokenformer_jax.errors import UserError

FILE = '.lock'
STALE_S = 900
_HEARTBEAT_S = 60


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _try_take(path: str) -> str | None:
  """Takes the lock (returns None) or returns why not."""
  me = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.strftime('%Y-%m-%d %H:%M:%S')}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path, encoding='utf-8') as f:
          holder = json.load(f)
        age = time.time() - os.path.getmtime(path)
      except (OSError, ValueError):
        holder, age = {}, float('inf')
      same_host = holder.get('host') == me['host']
      stale = (same_host and not _alive(int(holder.get('pid', 0)))) or (not same_host and age > STALE_S)
      if not stale:
        return (f'{os.path.dirname(path)} is in use by another run (host {holder.get("host")}, pid '
                f'{holder.get("pid")}, since {holder.get("started")}); wait for it, or remove {path} if '
                f'that run is gone')
      logging.warning('taking over the stale lock of %s (host %s, pid %s)', os.path.dirname(path),
                      holder.get('host'), holder.get('pid'))
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      json.dump(me, f)
    return None
  return f'could not take the lock {path}'


def _take(path: str) -> str | None:
  """Creates the lock's directory and takes the lock (returns None), or returns why not."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return _try_take(path)
  except OSError as e:
    return f'cannot lock {os.path.dirname(path)}: {e.strerror}'


def _remove_dir_if_empty(directory: str) -> None:
  """A run refused or ended before writing anything leaves no empty directory behind."""
  with contextlib.suppress(OSError):
    os.rmdir(directory)


@contextlib.contextmanager
def _held(path: str, created: bool):
  """Refreshes the lock's heartbeat while the body runs, then releases it."""
  stop = threading.Event()

  def heartbeat():
    while not stop.wait(_HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(path)
  threading.Thread(target=heartbeat, daemon=True).start()
  try:
    yield
  finally:
    stop.set()
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    if created:
      _remove_dir_if_empty(os.path.dirname(path))


@contextlib.contextmanager
def hold(workdir: str):
  """Holds WORKDIR/.lock for the duration (process 0 for all processes); a UserError if it is held."""
  # jax only here, where the processes must agree: `hold_here` (prepare) runs without importing it.
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.abspath(workdir), FILE)
  created = not os.path.exists(os.path.dirname(path))
  first = jax.process_index() == 0
  reason = _take(path) if first else None
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(reason is None))
    if not taken and reason is None:
      reason = f'{workdir} is in use by another run (see process 0)'
  if reason:
    if created and first:
      _remove_dir_if_empty(os.path.dirname(path))
    raise UserError(reason)
  if not first:
    yield
    return
  with _held(path, created):
    yield


@contextlib.contextmanager
def hold_here(directory: str):
  """Holds DIRECTORY/.lock for the duration, asking no other process: for a prepare, whose driver is
  one process (in a multi-process run, process 0 alone prepares raw text). A UserError if it is held."""
  path = os.path.join(os.path.abspath(directory), FILE)
  created = not os.path.exists(os.path.dirname(path))
  reason = _take(path)
  if reason:
    if created:
      _remove_dir_if_empty(os.path.dirname(path))
    raise UserError(reason)
  with _held(path, created):
    yield

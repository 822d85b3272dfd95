"""Noticing that a process of a multi-process run is gone, and ending the others in one line.

A process that dies (kill -9, a crash, a lost host) leaves the others waiting in their next collective.
JAX's coordination service notices its missing heartbeats after `heartbeat_timeout_seconds`; left to
itself it then aborts every other process from C++ (status 134, a check-failure stack and a thread
dump). Its Python hook for that moment (`missed_heartbeat_callback`) is not usable from Python in the
jax versions we support, so the service runs in JAX's recoverable mode instead
(`jax_enable_recoverability`): it keeps the others alive and stops listing the dead process in
`get_live_nodes`. A thread of every process (`PeerWatch`) asks for that list every few seconds;
a process whose peer dropped out of it prints one `error:` line naming the peer and exits with
EXIT_PEER_LOST.

A process that ends on purpose first leaves its exit status in the service's key-value store, so the
others never take it for dead: a peer that finished or saved and stopped is no alarm; one that ended
with an error is given the heartbeat timeout for this process to end too (the same error usually
reaches every process at once) before this one ends with the same line.

Recoverable mode also drops JAX's synchronised shutdown, and a client whose service is gone aborts:
so process 0, which hosts the service, waits for the others to disconnect before it leaves. If process
0 itself dies, the others lose the service and JAX ends them at once (status 134, its own message:
"Terminating process because the JAX distributed service detected fatal errors").
"""
import os
import sys
import threading
import time

from absl import logging

from tokenformer_jax.runtime.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED

# A peer process died or left the run with an error while this one still needed it (see the docstring);
# rerunning the run resumes from its last checkpoint.
EXIT_PEER_LOST = 3
POLL_S = 2.0
_MARKS = 'tokenformer_jax/exit_status/'


class PeerWatch:
  """Watches the other processes of the run through the coordination service's `client`."""

  def __init__(self, client, process: int, count: int, heartbeat_s: float, on_lost=None):
    self._client, self._me, self._count = client, process, count
    self._heartbeat_s = heartbeat_s
    self._on_lost = on_lost            # called with EXIT_PEER_LOST before this process ends
    self._leaving = threading.Event()
    self._rounds = 0                   # completed rounds, for `verdict`
    self._done = threading.Condition()
    self._failed_since = {}            # peer → when its error status was first seen
    self._failed = {}                  # peer → its error status, as of the last round
    self._thread = threading.Thread(target=self._run, name='peer-watch', daemon=True)

  def start(self) -> None:
    self._thread.start()

  def _round(self) -> tuple[set, dict]:
    """The live processes (every live one must ask: a barrier) and the exit statuses left so far."""
    live = set(self._client.get_live_nodes(list(range(self._count))))
    marks = {int(key.rsplit('/', 1)[1]): int(value) for key, value in self._client.key_value_dir_get(_MARKS)}
    return live, marks

  def _run(self) -> None:
    others = set(range(self._count)) - {self._me}
    while True:
      try:
        live, marks = self._round()
      except Exception as e:  # pylint: disable=broad-except
        if self._leaving.is_set():
          return
        logging.warning('could not ask the coordination service which processes are alive: %s', e)
        self._leaving.wait(POLL_S)
        continue
      with self._done:
        self._rounds += 1
        self._done.notify_all()
      if self._leaving.is_set():
        if self._me != 0 or not live & others:   # process 0 stays until the others are gone
          return
        continue   # the next round returns when one of them disconnects
      self._judge(others, live, marks)
      self._leaving.wait(POLL_S)

  def _judge(self, others: set, live: set, marks: dict) -> None:
    dead = sorted(others - live - marks.keys())
    if dead:
      self._end(dead, f'stopped answering (no heartbeat for {self._heartbeat_s:g} s: it died, or its '
                      'host is gone)')
    now = time.monotonic()
    failed = sorted(j for j, code in marks.items()
                    if j in others and code not in (0, EXIT_PREEMPTED, EXIT_INTERRUPTED))
    self._failed = {j: marks[j] for j in failed}
    overdue = [j for j in failed if now - self._failed_since.setdefault(j, now) >= self._heartbeat_s]
    if overdue:
      codes = ', '.join(str(marks[j]) for j in overdue)
      self._end(overdue, f'ended with status {codes} (see its log) while this one still needed it')

  def _end(self, peers: list, why: str) -> None:
    who = f'process {peers[0]}' if len(peers) == 1 else f'processes {", ".join(map(str, peers))}'
    # on a line of its own: the progress bar may have left the cursor at the end of its line
    print(f'\nerror: {who} of {self._count} {why}; process {self._me} ends with status {EXIT_PEER_LOST} '
          '(rerun to resume from the last checkpoint)', file=sys.stderr, flush=True)
    sys.stdout.flush()
    if self._on_lost is not None:
      try:
        self._on_lost(EXIT_PEER_LOST)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('could not record the outcome: %s', e)
    self._mark(EXIT_PEER_LOST)
    self._leaving.set()
    if self._me == 0:   # the service lives here: the others end first (they see the same loss)
      self._wait_for_others()
    else:   # disconnects, so that process 0 need not wait for this one's heartbeat to stop
      try:
        self._client.shutdown()
      except Exception:  # pylint: disable=broad-except
        pass
    # The main thread may be blocked in a collective that will never complete: end without it.
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access

  def _wait_for_others(self) -> None:
    deadline = time.monotonic() + 2 * self._heartbeat_s + 5 * POLL_S
    others = set(range(self._count)) - {self._me}
    while time.monotonic() < deadline:
      try:
        if not set(self._client.get_live_nodes(list(range(self._count)))) & others:
          return
      except Exception:  # pylint: disable=broad-except
        return

  def _mark(self, exit_status: int) -> None:
    try:
      self._client.key_value_set(f'{_MARKS}{self._me}', str(exit_status))
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('could not leave this process exit status with the coordination service: %s', e)

  def verdict(self) -> None:
    """Returns after a round that began after the call: a lost peer found by it ends this process
    first (so a collective that failed because a peer died ends in one line, not a traceback)."""
    with self._done:
      target = self._rounds + 2   # the round in flight may have begun before the failure
      self._done.wait_for(lambda: self._rounds >= target, timeout=self._heartbeat_s + 4 * POLL_S)
    for peer, code in self._failed.items():   # this error may only be the echo of theirs
      logging.error('process %d of %d ended with status %d before this error: see its log first', peer,
                    self._count, code)

  def leave(self, exit_status: int) -> None:
    """This process ends on purpose with `exit_status`: tells the others, stops watching; process 0
    first waits for the others to disconnect (bounded: a stuck one is ended by its own watch)."""
    self._mark(exit_status)
    self._leaving.set()
    bound = 2 * self._heartbeat_s + 5 * POLL_S if self._me == 0 else 2 * POLL_S
    if self._thread.is_alive():
      self._thread.join(timeout=bound)
    if self._me == 0 and self._thread.is_alive():
      logging.warning('some processes of the run are still connected; shutting the coordination '
                      'service down anyway')

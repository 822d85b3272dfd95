"""Preemption: SIGTERM on any process of a run makes all of them save one agreed step and stop.

The run then exits with status 143 (train.EXIT_PREEMPTED), so a scheduler or sweep never takes it for
a finished run; rerunning the command resumes from that step.
"""
import signal

import jax


class Preemption:
  """SIGTERM on any process → every process saves the same step, then the run ends preempted.

  One process: a SIGTERM handler sets a flag the loop reads between steps. Several: JAX's coordination
  service catches SIGTERM on whichever process gets it (its preemption notifier, installed by
  jax.distributed.initialize), and Orbax's `reached_preemption(step)`, called by every process at every
  step, returns True on all of them at one agreed step, so they save it together instead of one entering
  the collective save while the others run the next step.
  """

  def __init__(self, mngr):
    self._mngr = mngr
    self._several = jax.process_count() > 1
    self._requested = False
    self._previous = None

  def __enter__(self):
    if not self._several:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: no handler, no flag
        self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    """Whether the run stops after `step` (the same answer on every process)."""
    if self._several:
      self._requested = self._requested or self._mngr.reached_preemption(step)
    return self._requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

"""Stopping on a signal: SIGTERM (preemption) or Ctrl-C (SIGINT) on any process of a run makes all of
them save one agreed step and stop.

The run then exits with status 143 (SIGTERM: preempted) or 130 (Ctrl-C: interrupted), never 0, so a
scheduler or sweep never takes it for a finished run; rerunning the command resumes from that step.
The two differ so that a launcher relaunches a preempted run (launch/tpu_worker.sh, slurm_gpu.sbatch)
but not one its user stopped. A second Ctrl-C stops the process at once, without saving (the last
complete checkpoint stays; checkpoints are written atomically).
"""
import signal

import jax
from absl import logging

# 128 + the signal's number, as a shell reports a process that the signal ended.
EXIT_PREEMPTED = 143     # SIGTERM: a scheduler's preemption or maintenance event
EXIT_INTERRUPTED = 130   # SIGINT: Ctrl-C


class Preemption:
  """SIGTERM or SIGINT on any process → every process saves the same step, then the run ends.

  One process: signal handlers set a flag the loop reads between steps. Several: JAX's coordination
  service catches SIGTERM on whichever process gets it (its preemption notifier, installed by
  jax.distributed.initialize), and Orbax's `reached_preemption(step)`, called by every process at every
  step, returns True on all of them at one agreed step, so they save it together instead of one entering
  the collective save while the others run the next step. A Ctrl-C is handed to that notifier as a
  SIGTERM to this process, so it takes the same path (a terminal sends it to every local process).
  """

  def __init__(self, mngr):
    self._mngr = mngr
    self._several = jax.process_count() > 1
    self._requested = False
    self.interrupted = False   # the stop came from a Ctrl-C on this process
    self._previous = {}

  def __enter__(self):
    handlers = {signal.SIGINT: self._interrupt}
    if not self._several:
      handlers[signal.SIGTERM] = self._terminate
    for signum, handler in handlers.items():
      try:
        self._previous[signum] = signal.signal(signum, handler)
      except ValueError:  # not the main thread: no handler, no flag
        pass
    return self

  def _terminate(self, signum, frame):
    del signum, frame
    self._requested = True

  def _interrupt(self, signum, frame):
    del signum, frame
    self.interrupted = True
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # a second Ctrl-C ends the process at once
    logging.warning('Ctrl-C: saving after this step, then stopping (Ctrl-C again stops at once, '
                    'without saving)')
    if self._several:
      signal.raise_signal(signal.SIGTERM)   # JAX's notifier: every process agrees on the step
    else:
      self._requested = True

  @property
  def exit_status(self) -> int:
    return EXIT_INTERRUPTED if self.interrupted else EXIT_PREEMPTED

  @property
  def signal_name(self) -> str:
    return 'SIGINT (Ctrl-C)' if self.interrupted else 'SIGTERM'

  def reached(self, step: int) -> bool:
    """Whether the run stops after `step` (the same answer on every process)."""
    if self._several:
      self._requested = self._requested or self._mngr.reached_preemption(step)
    return self._requested

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)

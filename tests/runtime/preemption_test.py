"""preemption.py in this process: a first Ctrl-C asks for a save, a second one is left to end the process."""
import os
import signal

from tokenformer_jax.runtime import preemption


def test_ctrl_c_asks_for_a_save_and_leaves_the_second_to_end_the_process():
  before = signal.getsignal(signal.SIGINT)
  with preemption.Preemption(mngr=None) as stop:
    assert not stop.reached(1)
    os.kill(os.getpid(), signal.SIGINT)   # the handler runs before the next line
    assert stop.reached(2) and stop.interrupted
    assert (stop.exit_status, stop.signal_name) == (preemption.EXIT_INTERRUPTED, 'SIGINT (Ctrl-C)')
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL   # a second Ctrl-C ends it at once
  assert signal.getsignal(signal.SIGINT) == before


def test_sigterm_is_a_preemption():
  with preemption.Preemption(mngr=None) as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.reached(1) and not stop.interrupted and stop.exit_status == preemption.EXIT_PREEMPTED
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


class _AgreedStop:
  """Stands in for Orbax's manager: every process agrees to stop once a SIGTERM was seen."""

  def __init__(self):
    self.sigterm = False

  def reached_preemption(self, step):
    del step
    return self.sigterm


def test_ctrl_c_in_a_multi_process_run_goes_through_the_sigterm_notifier(monkeypatch):
  """With several processes the stop must be agreed: the Ctrl-C becomes a SIGTERM to this process,
  which JAX's preemption notifier (here: a stand-in handler) turns into one agreed step."""
  monkeypatch.setattr(preemption.jax, 'process_count', lambda: 2)
  mngr = _AgreedStop()
  previous = signal.signal(signal.SIGTERM, lambda *_: setattr(mngr, 'sigterm', True))
  try:
    with preemption.Preemption(mngr) as stop:
      assert not stop.reached(1)
      os.kill(os.getpid(), signal.SIGINT)
      assert mngr.sigterm and stop.reached(2) and stop.exit_status == preemption.EXIT_INTERRUPTED
  finally:
    signal.signal(signal.SIGTERM, previous)

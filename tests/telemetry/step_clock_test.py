"""The window's time split: buckets plus the train steps' remainder, data time only when the device idled."""
import time

import pytest

from tokenformer_jax.telemetry import step_clock


class _Output:
  """A stand-in for a step's output whose readiness the test sets before and after the fetch."""

  def __init__(self, *ready):
    self._ready = list(ready)

  def is_ready(self):
    return self._ready.pop(0)


def _fetch(clock, output):
  return clock.fetch(lambda: time.sleep(0.02) or 'batch', output)


def test_buckets_and_the_remainder_sum_to_the_window():
  clock = step_clock.StepClock()
  with clock.measure('eval'):
    time.sleep(0.03)
  clock.add('checkpoint', 0.01)
  time.sleep(0.02)
  window = clock.close_window()
  assert window['time_eval_s'] >= 0.03 and window['time_checkpoint_s'] == 0.01
  assert window['time_step_s'] >= 0.01   # the 0.02 s sleep less the 0.01 s added by hand
  parts = window['time_step_s'] + sum(window[f'time_{b}_s'] for b in step_clock.BUCKETS)
  assert parts == pytest.approx(window['time_window_s'])
  assert clock.close_window()['time_eval_s'] == 0.0   # the next window starts empty


@pytest.mark.parametrize('output,counted', [
    (None, True),                      # nothing dispatched yet: the device waits for this batch
    (_Output(True, True), True),       # the device was idle all along
    (_Output(False, True), True),      # it ran dry during the fetch (counted whole: an upper bound)
    (_Output(False, False), False),    # busy throughout: the fetch overlapped the device's step
])
def test_fetch_counts_as_waiting_only_when_the_device_idled(output, counted):
  clock = step_clock.StepClock()
  assert _fetch(clock, output) == 'batch'
  data_s = clock.close_window()['time_data_s']
  assert (data_s >= 0.02) if counted else data_s == 0.0

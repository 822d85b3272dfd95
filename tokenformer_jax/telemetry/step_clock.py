"""Where a log window's wall time went: start-up, waiting for data, train steps, evaluation, checkpoint
saves, profiling.

The loop never waits for the device to see this: JAX dispatches a step and returns while the device
still runs it, and only the log's read of the metrics (already there) waits. So the window's wall time is
split by what the host did, and the train steps get the remainder: dispatching them and waiting for the
device at the log. Two corrections keep that split honest without a sync per step:
- A batch fetched while the device is still busy with an earlier step costs the run nothing, so fetch
  time counts as waiting for data only when the device had no step to run at the fetch's start or end
  (`jax.Array.is_ready`, which does not block). A fetch during which the device ran dry part way counts
  whole: `time_data_s` is an upper bound of the input stall.
- Before an evaluation or a save, the steps dispatched so far are waited for and counted as
  train-step time, so evaluation and checkpoint time hold only their own work. That is a wait at those
  points only, not per step.
"""
import contextlib
import time

BUCKETS = ('startup', 'data', 'eval', 'checkpoint', 'profile')


class StepClock:
  """Accumulates a window's seconds per bucket; `close_window` returns them and starts the next."""

  def __init__(self, start: float | None = None):
    self._window_start = time.perf_counter() if start is None else start
    self._spent = dict.fromkeys(BUCKETS, 0.0)

  def add(self, bucket: str, seconds: float) -> None:
    self._spent[bucket] += seconds

  @contextlib.contextmanager
  def measure(self, bucket: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self._spent[bucket] += time.perf_counter() - start

  def fetch(self, next_batch, last_output):
    """next_batch(), timed as waiting for data unless the device was busy with `last_output`'s step
    (None: nothing dispatched yet) both when the fetch began and when it ended."""
    busy_before = last_output is not None and not last_output.is_ready()
    start = time.perf_counter()
    batch = next_batch()
    seconds = time.perf_counter() - start
    if not (busy_before and not last_output.is_ready()):
      self._spent['data'] += seconds
    return batch

  def close_window(self) -> dict:
    """{'time_window_s', 'time_step_s', 'time_<bucket>_s' ...} of the window now ending: the buckets and
    the train steps' remainder sum to the window's wall time."""
    now = time.perf_counter()
    window = now - self._window_start
    record = {'time_window_s': window, 'time_step_s': max(window - sum(self._spent.values()), 0.0)}
    record.update({f'time_{bucket}_s': seconds for bucket, seconds in self._spent.items()})
    self._window_start, self._spent = now, dict.fromkeys(BUCKETS, 0.0)
    return record

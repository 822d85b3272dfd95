"""Profiler windows: a `jax.profiler` trace of chosen train steps, and the on-demand profiler server.

`train.profile_steps=(START, COUNT)` traces the COUNT steps from step START on (0-based: the state's step
before the update; COUNT 0 is off), and `train.profile_every=N` again every N steps after that. The trace
goes to WORKDIR/profile/ (process 0 only, the default) or, with `train.profile_all_hosts`, to
WORKDIR/profile/process_<i>/ for every process, since processes sharing a host name would overwrite
each other's files. TensorBoard's profile plugin reads the .xplane.pb files; Perfetto
(ui.perfetto.dev) opens the perfetto_trace.json.gz beside them.

`train.profiler_port=P` starts `jax.profiler.start_server` (process i on port P + i when every process
profiles, else process 0 only), for TensorBoard's "capture profile" or `jax.collect_profile` at any time.
"""
import os

import jax
from absl import logging

from tokenformer_jax.errors import UserError


def check(t) -> None:
  """Refuses profiler settings no run could use (config.validate calls it)."""
  if len(t.profile_steps) != 2 or any(int(v) < 0 for v in t.profile_steps):
    raise UserError(f'train.profile_steps must be (START, COUNT) with both >= 0, got {t.profile_steps}')
  count = int(t.profile_steps[1])
  if t.profile_every < 0 or (t.profile_every and t.profile_every < count):
    raise UserError(f'train.profile_every must be 0 (once) or at least the window\'s COUNT ({count}), '
                    f'got {t.profile_every}')
  if not 0 <= t.profiler_port < 65536:
    raise UserError(f'train.profiler_port must be a port number (0: off), got {t.profiler_port}')


def window_starts_at(step: int, start: int, count: int, every: int) -> bool:
  if count == 0 or step < start:
    return False
  return step == start or (every > 0 and (step - start) % every == 0)


class Profiler:
  """Starts and stops traces around the train steps of the configured windows."""

  def __init__(self, t, workdir: str):
    self._start, self._count = (int(v) for v in t.profile_steps)
    self._every = t.profile_every
    all_hosts, proc = t.profile_all_hosts, jax.process_index()
    self.enabled = proc == 0 or all_hosts
    self.directory = os.path.join(workdir, 'profile', f'process_{proc}' if all_hosts else '')
    self._stop_after = None   # the last step of the window being traced
    self._server = False
    if t.profiler_port and self.enabled:
      port = t.profiler_port + (proc if all_hosts else 0)
      jax.profiler.start_server(port)
      self._server = True
      logging.info('profiler server listening on port %d', port)

  def starts_at(self, step: int) -> bool:
    """True when a window begins with step `step` (then call `start` before dispatching it)."""
    return (self.enabled and self._stop_after is None
            and window_starts_at(step, self._start, self._count, self._every))

  def start(self, step: int) -> None:
    os.makedirs(self.directory, exist_ok=True)
    jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
    self._stop_after = step + self._count - 1

  def ends_at(self, step: int) -> bool:
    """True when step `step` is the last of the open window: wait for the dispatched steps (so the trace
    holds their device work), then call `stop`."""
    return self._stop_after is not None and step >= self._stop_after

  def stop(self) -> None:
    """Writes the open window's trace; a no-op when none is open."""
    if self._stop_after is None:
      return
    jax.profiler.stop_trace()
    logging.info('profile of steps %d-%d written to %s', self._stop_after - self._count + 1,
                 self._stop_after, self.directory)
    self._stop_after = None

  def close(self) -> None:
    self.stop()
    if self._server:
      jax.profiler.stop_server()
      self._server = False

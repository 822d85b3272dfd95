"""Profiler windows: a trace of the chosen steps holding their XLA ops, periodic windows, the server."""
import glob
import gzip
import json
import socket
import types

import pytest

from tests.helpers import train_small
from tokenformer_jax.errors import UserError
from tokenformer_jax.telemetry import profiling


def test_window_starts():
  once = [s for s in range(40) if profiling.window_starts_at(s, start=5, count=3, every=0)]
  periodic = [s for s in range(40) if profiling.window_starts_at(s, start=5, count=3, every=10)]
  assert once == [5] and periodic == [5, 15, 25, 35]
  assert not any(profiling.window_starts_at(s, 5, 0, 10) for s in range(40))   # COUNT 0: off


@pytest.mark.parametrize('overrides,message', [
    ({'profile_steps': (5,)}, 'train.profile_steps must be (START, COUNT)'),
    ({'profile_steps': (-1, 2)}, 'train.profile_steps must be (START, COUNT)'),
    ({'profile_steps': (5, 4), 'profile_every': 2}, 'at least the window\'s COUNT (4)'),
    ({'profiler_port': 70000}, 'train.profiler_port must be a port number'),
])
def test_bad_settings_are_refused(overrides, message):
  t = types.SimpleNamespace(**{'profile_steps': (0, 0), 'profile_every': 0, 'profiler_port': 0,
                               **overrides})
  with pytest.raises(UserError, match=message.replace('(', r'\(').replace(')', r'\)')):
    profiling.check(t)


@pytest.mark.slow
def test_a_trace_of_the_window_holds_the_train_steps_xla_ops(data_cache, tmp_path):
  train_small(tmp_path, data_cache, steps=6, log_every=3, eval_every=6, checkpoint_every=6,
              profile_steps=(2, 2))
  traces = glob.glob(str(tmp_path / 'profile' / 'plugins' / 'profile' / '*' / '*.xplane.pb'))
  assert len(traces) == 1   # one window, for TensorBoard's profile plugin ...
  perfetto = glob.glob(str(tmp_path / 'profile' / 'plugins' / 'profile' / '*' / 'perfetto_trace.json.gz'))
  with gzip.open(perfetto[0]) as f:   # ... and for Perfetto
    events = json.load(f)['traceEvents']
  ops = [e for e in events if e.get('args', {}).get('hlo_module') == 'jit_train_step']
  assert {e['args']['hlo_op'] for e in ops} and any('fusion' in e['args']['hlo_op'] for e in ops)
  assert len({e['args']['run_id'] for e in ops}) >= 2   # both traced steps ran inside the trace
  with open(tmp_path / 'metrics.jsonl') as f:
    profiled = sum(r.get('time_profile_s', 0.0) for r in map(json.loads, f))
  assert profiled > 0   # writing the trace is counted as its own badput, not as train-step time


def test_the_profiler_server_listens_on_its_port(tmp_path):
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  t = types.SimpleNamespace(profile_steps=(0, 0), profile_every=0, profile_all_hosts=True,
                            profiler_port=port)
  profiler = profiling.Profiler(t, str(tmp_path))
  try:
    assert profiler.directory.rstrip('/').endswith('profile/process_0')
    socket.create_connection(('localhost', port), timeout=10).close()
  finally:
    profiler.close()

"""Train-step benchmark: TokenFormer against the dense baseline with equal non-embedding parameters.

In one process: the matmul peak of this machine (measured before the models and after them; the best of
these is the MFU denominator, since the host's speed drifts), then for each kind the compile time, the
median step time over --steps steps after --warmup (the kinds alternate step by step), tokens/s, model
GFLOP/s (flops.train_flops_per_token × tokens), MFU, and memory (XLA's buffers per model: arguments +
temporaries; the process's peak RSS, or the accelerator's peak bytes in use, once the models have run);
TokenFormer / dense as the ratio of the median steps and round by round (median and quartiles); the
training loop's per-step bookkeeping (time breakdown, goodput, profiler checks) in µs and as a share of
the step. Prints a table and writes JSON.

  python benchmarks/step.py --config=experiments/tiny.py
  python benchmarks/step.py --config=experiments/bench.py:b --steps=5 --json=/tmp/step.json
  python benchmarks/step.py --config=experiments/progressive.py:354m --kinds=tokenformer \
      --config.train.batch_size=16 --peak_dtype=bfloat16 --peak_size=8192 --spec_peak_tflops=989
  launch/with_tcmalloc.sh python benchmarks/step.py --config=experiments/bench.py:b   # tcmalloc
"""
import json
import resource
import statistics
import tempfile
import time

from absl import flags
from ml_collections import config_flags

import harness

import jax  # noqa: E402  (after harness: it puts the checkout on the path)
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from tokenformer_jax.model import flops  # noqa: E402
from tokenformer_jax.model import transformer as model_lib  # noqa: E402
from tokenformer_jax.runtime import sharding  # noqa: E402
from tokenformer_jax.telemetry import goodput  # noqa: E402
from tokenformer_jax.telemetry import profiling  # noqa: E402
from tokenformer_jax.telemetry import step_clock  # noqa: E402
from tokenformer_jax.training import state as state_lib  # noqa: E402
from tokenformer_jax.training import step as step_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file (path.py[:arg]).',
                                          lock_config=True)
_KINDS = flags.DEFINE_list('kinds', ['tokenformer', 'dense'], 'Model kinds to run.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per model.', lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.', lower_bound=0)
_PEAK_DTYPE = flags.DEFINE_enum('peak_dtype', 'float32', ['float32', 'bfloat16'],
                                'dtype of the matmul whose speed is the MFU denominator.')
_PEAK_SIZE = flags.DEFINE_integer('peak_size', 2048, 'n of the n×n×n peak matmul.')
_SPEC_PEAK = flags.DEFINE_float('spec_peak_tflops', 0.0,
                                'The chip\'s datasheet peak (e.g. 989 for H100/H200 bf16 dense): '
                                'MFU is also reported against it.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')


def _peak_memory_MiB() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(kind: str) -> dict:
  """Builds and compiles one model's train step; returns what timing and reporting need."""
  c = harness.of_kind(_CONFIG.value, kind)
  mesh = sharding.make_mesh(c.mesh)
  spec = state_lib.make_spec(c, c.model.vocab_size, mesh)
  state = state_lib.init_state(spec, c)
  train_step = step_lib.make_train_step(spec, c)
  rows = c.train.batch_size // jax.process_count()
  batch = step_lib.global_batch(spec, c, np.random.default_rng(0).integers(
      0, c.model.vocab_size, (rows, c.data.seq_len + 1), dtype=np.int32))
  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  return {'kind': kind, 'config': c, 'spec': spec, 'state': state, 'batch': batch,
          'compiled': compiled, 'compile_s': compile_s, 'memory': compiled.memory_analysis(),
          'times': [], 'metrics': None}


def time_alternating(runs: list) -> None:
  """Warm-up steps, then --steps rounds in which each model runs one timed step in turn.

  Alternating step by step puts the models of one config under the same machine load, so their ratio
  is not skewed by the host's drift (about 10% between runs on shared machines)."""
  for run in runs:
    for _ in range(_WARMUP.value):
      run['state'], run['metrics'] = run['compiled'](run['state'], run['batch'])
    jax.block_until_ready(run['state'])
  for _ in range(_STEPS.value):
    for run in runs:
      start = time.perf_counter()
      run['state'], run['metrics'] = run['compiled'](run['state'], run['batch'])
      jax.block_until_ready(run['metrics'])
      run['times'].append(time.perf_counter() - start)


def instrumentation_s_per_step(output, log_every: int, steps: int = 20000) -> float:
  """Host seconds per step of the training loop's own bookkeeping, timed on the library's calls: every
  step the timed fetch (around a batch that is already there, with `output`, a step's finished array,
  as the readiness probe) and the profiler-window checks; every log_every steps the window's breakdown
  and goodput record (appended to a file, as a run does), spread over its steps."""
  t = ml_collections.ConfigDict({'profile_steps': (0, 0), 'profile_every': 0, 'profile_all_hosts': False,
                                 'profiler_port': 0})
  with tempfile.TemporaryDirectory() as workdir:
    clock, profiler = step_clock.StepClock(), profiling.Profiler(t, workdir)
    account = goodput.Goodput(workdir, 0)
    batch = object()
    start = time.perf_counter()
    for step in range(steps):
      clock.fetch(lambda: batch, output)
      profiler.starts_at(step)
      profiler.ends_at(step)
      if (step + 1) % log_every == 0:
        account.add_window(step + 1, log_every, clock.close_window())
        account.summary()
    return (time.perf_counter() - start) / steps


def paired_ratios(times_a: list, times_b: list) -> dict:
  """a / b within each round (the two steps ran back to back) → median and quartiles. The host's drift
  moves both steps of a round together, so these quartiles show how far the ratio can be trusted."""
  q1, median, q3 = np.percentile(np.asarray(times_a) / np.asarray(times_b), [25, 50, 75])
  return {'median': float(median), 'q1': float(q1), 'q3': float(q3), 'rounds': len(times_a)}


def summarize(run: dict) -> dict:
  """The JSON row of one timed model, less its MFU (added once the run's best peak is known)."""
  c, spec, times, memory = run['config'], run['spec'], run['times'], run['memory']
  step_s = statistics.median(times)
  tokens = c.train.batch_size * c.data.seq_len
  step_flops = flops.train_flops_per_token(c.model, c.model.vocab_size, c.data.seq_len) * tokens
  result = {
      'kind': run['kind'],
      'dtype': c.model.dtype, 'attention_impl': spec.model_cfg.attention_impl, 'remat': c.model.remat,
      'scan_unroll': spec.model_cfg.scan_unroll, 'params_M': state_lib.num_params(spec) / 1e6,
      'nonembedding_params_M': model_lib.nonembedding_params(c.model) / 1e6,
      'batch': c.train.batch_size, 'seq': c.data.seq_len, 'step_s': step_s,
      'step_s_min': min(times), 'tokens_per_s': tokens / step_s,
      'gflop_per_step': step_flops / 1e9, 'gflops_per_s': step_flops / step_s / 1e9,
      'compile_s': run['compile_s'],
      'temp_MiB': getattr(memory, 'temp_size_in_bytes', 0) / 2**20,
      'args_MiB': getattr(memory, 'argument_size_in_bytes', 0) / 2**20,
      # the process's peak once this config's models have run (they are alive together)
      'peak_memory_MiB': _peak_memory_MiB(), 'final_loss': float(run['metrics']['loss']),
  }
  overhead_s = instrumentation_s_per_step(run['metrics']['loss'], c.train.log_every)
  result['instrumentation_us_per_step'] = overhead_s * 1e6
  result['instrumentation_share'] = overhead_s / step_s
  if _SPEC_PEAK.value:
    result['mfu_spec'] = step_flops / step_s / (_SPEC_PEAK.value * 1e12)
  return result


def main(argv):
  if len(argv) > 1:
    raise harness.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  cfg = harness.config_lib.from_flag(_CONFIG)
  for kind in _KINDS.value:
    harness.of_kind(cfg, kind)     # bad input fails before anything is timed
  measure_peak = lambda: harness.measure_matmul_peak(_PEAK_SIZE.value, _PEAK_DTYPE.value)
  # The host's speed drifts within a run, so the peak is measured before the models and after them,
  # and the best is the MFU denominator (one early measurement taken in a slow moment would put MFU
  # above 100%).
  peaks = [measure_peak()]
  machine = harness.machine()
  print(f"{_PEAK_DTYPE.value} matmul peak ({_PEAK_SIZE.value}³) before the models: "
        f"{peaks[0] / 1e9:.1f} GFLOP/s on {machine['device_kind']} ({machine['cpu_count']} CPUs); "
        f"host allocator: {machine['host_allocator']}", flush=True)
  runs = [prepare(kind) for kind in _KINDS.value]
  time_alternating(runs)
  rows = [summarize(run) for run in runs]
  round_times = {run['kind']: run['times'] for run in runs}
  del runs
  peaks.append(measure_peak())
  peak = max(peaks)
  machine.update({'matmul_peak_gflops': peak / 1e9,
                  'matmul_peak_measurements_gflops': [p / 1e9 for p in peaks],
                  'peak_dtype': _PEAK_DTYPE.value, 'spec_peak_tflops': _SPEC_PEAK.value})
  print(f"matmul peak after the models {peaks[-1] / 1e9:.1f} GFLOP/s; best of {len(peaks)}: "
        f"{peak / 1e9:.1f} GFLOP/s (MFU denominator)")
  print('FLOPs per token = 6·N_nonembed + 6·d·V + 12·L·d·T')
  print(f"{'kind':11} {'params':>8} {'step s':>8} {'tok/s':>9} {'GFLOP/s':>9} "
        f"{'MFU':>6} {'compile':>8} {'buffers':>9} {'peak':>9}")
  for r in rows:
    r['mfu'] = r['gflops_per_s'] * 1e9 / peak
    spec_mfu = f"  ({r['mfu_spec']:.1%} of the datasheet peak)" if 'mfu_spec' in r else ''
    print(f"{r['kind']:11} {r['params_M']:7.1f}M {r['step_s']:8.3f} "
          f"{r['tokens_per_s']:9.0f} {r['gflops_per_s']:9.1f} {r['mfu']:6.1%} {r['compile_s']:7.1f}s "
          f"{r['temp_MiB'] + r['args_MiB']:6.0f}MiB {r['peak_memory_MiB']:6.0f}MiB{spec_mfu}")
  by_kind = {r['kind']: r for r in rows}
  for r in rows:
    print(f"{r['kind']:11} the loop's bookkeeping (timed fetch, profiler checks, breakdown and goodput "
          f"per log window): {r['instrumentation_us_per_step']:.1f} µs per step, "
          f"{r['instrumentation_share']:.3%} of the step")
  if {'tokenformer', 'dense'} <= set(by_kind):
    tf, dense = by_kind['tokenformer'], by_kind['dense']
    paired = paired_ratios(round_times['tokenformer'], round_times['dense'])
    tf['over_dense'] = {'of_medians': tf['step_s'] / dense['step_s'], **paired}
    print(f"TokenFormer / dense step time: {tf['step_s'] / dense['step_s']:.3f} (round by round: median "
          f"{paired['median']:.3f}, quartiles {paired['q1']:.3f}-{paired['q3']:.3f})")
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'machine': machine, 'config': _CONFIG.value.to_dict(), 'results': rows}, f, indent=2)


if __name__ == '__main__':
  harness.run(main)

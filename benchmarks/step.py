"""Train-step benchmark: TokenFormer against the dense baseline with equal non-embedding parameters.

In one process: the matmul peak of this machine (measured before the first config and after each one;
the best of these is the MFU denominator, since the host's speed drifts), then for each config the compile
time of each kind, the median step time over --steps steps after --warmup (the kinds of a config alternate
step by step), tokens/s, model GFLOP/s (flops.train_flops_per_token × tokens), MFU, and memory (XLA's
buffers per model: arguments + temporaries; the process's peak RSS, or the accelerator's peak bytes in
use, once the config's models have run); TokenFormer / dense as the ratio of the median steps and round
by round (median and quartiles). Prints a table and writes JSON.

  python benchmarks/step.py                                  # tiny and the ~20M config, f32 on CPU
  python benchmarks/step.py --configs=b --steps=5 --json=/tmp/step.json
  python benchmarks/step.py --configs=experiments/progressive.py:354m --kinds=tokenformer \
      --override=train.batch_size=16 --peak_dtype=bfloat16 --peak_size=8192 --spec_peak_tflops=989
"""
import json
import os
import platform
import resource
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import shapes  # noqa: E402
from tokenformer_jax import config as config_lib  # noqa: E402
from tokenformer_jax import flops, host_memory, sharding  # noqa: E402
from tokenformer_jax import state as state_lib  # noqa: E402
from tokenformer_jax import step as step_lib  # noqa: E402

_CONFIGS = flags.DEFINE_list('configs', ['tiny', 'm20'],
                             f'Names from {sorted(shapes.SHAPES)} or experiment files (path.py:arg).')
_KINDS = flags.DEFINE_list('kinds', ['tokenformer', 'dense'], 'Model kinds to run for each config.')
_OVERRIDE = flags.DEFINE_list('override', [], 'section.key=value overrides applied to every config.')
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


def prepare(name: str, kind: str) -> dict:
  """Builds and compiles one model's train step; returns what timing and reporting need."""
  c = shapes.make_config(name, kind, _OVERRIDE.value)
  config_lib.validate(c)
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
  return {'name': name, 'kind': kind, 'config': c, 'spec': spec, 'state': state, 'batch': batch,
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
      'config': run['name'], 'kind': run['kind'], 'overrides': list(_OVERRIDE.value),
      'dtype': c.model.dtype, 'attention_impl': spec.model_cfg.attention_impl, 'remat': c.model.remat,
      'scan_unroll': spec.model_cfg.scan_unroll, 'params_M': state_lib.num_params(spec) / 1e6,
      'nonembedding_params_M': flops.nonembedding_params(c.model) / 1e6,
      'batch': c.train.batch_size, 'seq': c.data.seq_len, 'step_s': step_s,
      'step_s_min': min(times), 'tokens_per_s': tokens / step_s,
      'gflop_per_step': step_flops / 1e9, 'gflops_per_s': step_flops / step_s / 1e9,
      'compile_s': run['compile_s'],
      'temp_MiB': getattr(memory, 'temp_size_in_bytes', 0) / 2**20,
      'args_MiB': getattr(memory, 'argument_size_in_bytes', 0) / 2**20,
      # the process's peak once this config's models have run (they are alive together)
      'peak_memory_MiB': _peak_memory_MiB(), 'final_loss': float(run['metrics']['loss']),
  }
  if _SPEC_PEAK.value:
    result['mfu_spec'] = step_flops / step_s / (_SPEC_PEAK.value * 1e12)
  return result


def main(argv):
  del argv
  for name in _CONFIGS.value:
    if not shapes.known(name):
      print(f'error: unknown config {name!r}; use one of {sorted(shapes.SHAPES)} or path.py:arg',
            file=sys.stderr)
      sys.exit(2)
  try:
    for name in _CONFIGS.value:
      shapes.make_config(name, 'tokenformer', _OVERRIDE.value)
  except (ValueError, config_lib.UserError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  measure_peak = lambda: flops.measure_matmul_peak(_PEAK_SIZE.value, jnp.dtype(_PEAK_DTYPE.value))
  # The host's speed drifts within a run, so the peak is measured before the first config and after
  # each one, and the best of these is the MFU denominator (one early measurement taken in a slow
  # moment would put MFU above 100%).
  peaks = [measure_peak()]
  device = jax.devices()[0]
  print(f"{_PEAK_DTYPE.value} matmul peak ({_PEAK_SIZE.value}³) before the first config: "
        f"{peaks[0] / 1e9:.1f} GFLOP/s on {device.device_kind} ({os.cpu_count()} CPUs); "
        f"host allocator: {host_memory.describe()}", flush=True)
  rows, ratio_lines = [], []
  for name in _CONFIGS.value:
    runs = [prepare(name, kind) for kind in _KINDS.value]
    time_alternating(runs)
    group = [summarize(run) for run in runs]
    round_times = {run['kind']: run['times'] for run in runs}
    del runs
    peaks.append(measure_peak())
    rows.extend(group)
    by_kind = {r['kind']: r for r in group}
    if {'tokenformer', 'dense'} <= set(by_kind):
      tf, dense = by_kind['tokenformer'], by_kind['dense']
      paired = paired_ratios(round_times['tokenformer'], round_times['dense'])
      tf['over_dense'] = {'of_medians': tf['step_s'] / dense['step_s'], **paired}
      ratio_lines.append(
          f"{name[-10:]:10} TokenFormer / dense step time: {tf['step_s'] / dense['step_s']:.3f} "
          f"(round by round: median {paired['median']:.3f}, quartiles {paired['q1']:.3f}-"
          f"{paired['q3']:.3f})")
    print(f"{name}: timed; matmul peak after it {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
  peak = max(peaks)
  machine = {'platform': jax.default_backend(), 'device_kind': device.device_kind,
             'devices': jax.device_count(), 'cpu_count': os.cpu_count(),
             'processor': platform.processor() or platform.machine(), 'jax': jax.__version__,
             'matmul_peak_gflops': peak / 1e9, 'matmul_peak_measurements_gflops': [p / 1e9 for p in peaks],
             'peak_dtype': _PEAK_DTYPE.value, 'spec_peak_tflops': _SPEC_PEAK.value,
             'host_allocator': host_memory.describe()}
  print(f"matmul peak, best of {len(peaks)} measurements: {peak / 1e9:.1f} GFLOP/s (MFU denominator)")
  print('FLOPs per token = 6·N_nonembed + 6·d·V + 12·L·d·T')
  print(f"{'config':10} {'kind':11} {'params':>8} {'step s':>8} {'tok/s':>9} {'GFLOP/s':>9} "
        f"{'MFU':>6} {'compile':>8} {'buffers':>9} {'peak':>9}")
  for r in rows:
    r['mfu'] = r['gflops_per_s'] * 1e9 / peak
    spec_mfu = f"  ({r['mfu_spec']:.1%} of the datasheet peak)" if 'mfu_spec' in r else ''
    print(f"{r['config'][-10:]:10} {r['kind']:11} {r['params_M']:7.1f}M {r['step_s']:8.3f} "
          f"{r['tokens_per_s']:9.0f} {r['gflops_per_s']:9.1f} {r['mfu']:6.1%} {r['compile_s']:7.1f}s "
          f"{r['temp_MiB'] + r['args_MiB']:6.0f}MiB {r['peak_memory_MiB']:6.0f}MiB{spec_mfu}")
  for line in ratio_lines:
    print(line)
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'machine': machine, 'results': rows}, f, indent=2)


if __name__ == '__main__':
  host_memory.reexec()
  app.run(main)

"""Train-step benchmark: TokenFormer against the dense baseline with equal non-embedding parameters.

In one process: the f32 matmul peak of this machine (the MFU denominator), then for each config and kind
the compile time, the median step time over --steps steps after --warmup, tokens/s, model GFLOP/s
(flops.train_flops_per_token × tokens) and MFU. Prints a table and writes JSON.

  python benchmarks/step.py                       # tiny and the ~20M config
  python benchmarks/step.py --configs=b --steps=5 --json=/tmp/step.json
"""
import json
import os
import platform
import resource
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tokenformer_jax import flops, sharding  # noqa: E402
from tokenformer_jax import state as state_lib  # noqa: E402
from tokenformer_jax import step as step_lib  # noqa: E402
from tokenformer_jax.config import base_config  # noqa: E402

_CONFIGS = flags.DEFINE_list('configs', ['tiny', 'm20'], 'Which of: tiny, m20, b.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per model.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')

# name: (layers, d_model, heads, n_qkv, n_proj, n_ffn, vocab, batch, seq)
SHAPES = {
    'tiny': (4, 128, 4, 128, 128, 512, 2048, 16, 128),     # experiments/tiny.py
    'm20': (4, 512, 8, 512, 512, 2048, 4096, 8, 256),      # 18.9M parameters
    'b': (6, 512, 8, 512, 512, 2048, 4096, 8, 256),        # 27.3M, the performance issue's config (b)
}


def make_config(name: str, kind: str):
  L, d, h, n_qkv, n_proj, n_ffn, vocab, batch, seq = SHAPES[name]
  c = base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads = L, d, h
  m.n_qkv, m.n_proj, m.n_ffn, m.vocab_size = n_qkv, n_proj, n_ffn, vocab
  m.kind = kind
  # equal non-embedding parameters: 4d² + 2d·mlp = 2d·(3n_qkv + n_proj + n_ffn)
  m.mlp_dim = 3 * n_qkv + n_proj + n_ffn - 2 * d
  c.data.seq_len = seq
  c.train.batch_size = batch
  return c


def bench(name: str, kind: str, peak: float) -> dict:
  c = make_config(name, kind)
  mesh = sharding.make_mesh(c.mesh)
  spec = state_lib.make_spec(c, c.model.vocab_size, mesh)
  state = state_lib.init_state(spec, c)
  train_step = step_lib.make_train_step(spec, c)
  rng = np.random.default_rng(0)
  batch = step_lib.global_batch(spec, c, rng.integers(
      0, c.model.vocab_size, (c.train.batch_size, c.data.seq_len + 1), dtype=np.int32))

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  tokens = c.train.batch_size * c.data.seq_len
  step_flops = flops.train_flops_per_token(c.model, c.model.vocab_size, c.data.seq_len) * tokens
  return {
      'config': name, 'kind': kind, 'params_M': state_lib.num_params(spec) / 1e6,
      'nonembedding_params_M': flops.nonembedding_params(c.model) / 1e6,
      'batch': c.train.batch_size, 'seq': c.data.seq_len, 'step_s': step_s,
      'step_s_min': min(times), 'tokens_per_s': tokens / step_s,
      'gflop_per_step': step_flops / 1e9, 'gflops_per_s': step_flops / step_s / 1e9,
      'mfu': step_flops / step_s / peak, 'compile_s': compile_s,
      'temp_MiB': getattr(memory, 'temp_size_in_bytes', 0) / 2**20,
      'args_MiB': getattr(memory, 'argument_size_in_bytes', 0) / 2**20,
  }


def main(argv):
  del argv
  for name in _CONFIGS.value:
    if name not in SHAPES:
      print(f'error: unknown config {name!r}; choose from {sorted(SHAPES)}', file=sys.stderr)
      sys.exit(2)
  peak = flops.measure_matmul_peak()
  machine = {'platform': jax.default_backend(), 'devices': jax.device_count(),
             'cpu_count': os.cpu_count(), 'processor': platform.processor() or platform.machine(),
             'jax': jax.__version__, 'matmul_peak_gflops': peak / 1e9}
  print(f"f32 matmul peak (2048³): {peak / 1e9:.1f} GFLOP/s on {machine['cpu_count']} CPUs")
  print('FLOPs per token = 6·N_nonembed + 6·d·V + 12·L·d·T')
  rows = []
  header = (f"{'config':6} {'kind':11} {'params':>8} {'step s':>8} {'tok/s':>9} {'GFLOP/s':>8} "
            f"{'MFU':>6} {'compile':>8}")
  print(header)
  for name in _CONFIGS.value:
    for kind in ('tokenformer', 'dense'):
      r = bench(name, kind, peak)
      rows.append(r)
      print(f"{name:6} {kind:11} {r['params_M']:7.1f}M {r['step_s']:8.3f} {r['tokens_per_s']:9.0f} "
            f"{r['gflops_per_s']:8.1f} {r['mfu']:6.1%} {r['compile_s']:7.1f}s", flush=True)
    tf, dense = rows[-2], rows[-1]
    print(f"{name:6} TokenFormer / dense step time: {tf['step_s'] / dense['step_s']:.3f}")
  machine['peak_rss_MiB'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'machine': machine, 'results': rows}, f, indent=2)


if __name__ == '__main__':
  app.run(main)

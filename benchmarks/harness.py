"""What the benchmark scripts share: the machine they ran on, its matmul peak, and the two model kinds.

Each script takes one experiment file, `--config=experiments/tiny.py` or `--config=experiments/bench.py:b`,
with ml_collections overrides (`--config.train.batch_size=4`), exactly as main.py does; `run` parses the
flags, chooses the JAX platforms as main.py does, and turns bad input into one `error:` line.
"""
import os
import platform
import time

from absl import app

from tokenformer_jax import config as config_lib
from tokenformer_jax.errors import UserError, fail, parse_flags
from tokenformer_jax.model import transformer as model_lib
from tokenformer_jax.runtime import platforms


def run(main) -> None:
  """app.run(main) with main.py's flag errors, platform choice and UserError handling."""
  platforms.choose()

  def guarded(argv):
    try:
      main(argv)
    except UserError as e:
      fail(e)
  app.run(guarded, flags_parser=parse_flags)


def of_kind(cfg, kind: str):
  """The config as `kind`: the TokenFormer itself, or the dense baseline with its non-embedding
  parameters (mlp_dim = model.dense_mlp_dim_matching); model.vocab_size set to the padded vocab."""
  overrides = {'model.vocab_size': config_lib.padded_vocab(cfg.model, cfg.data.vocab_size),
               'model.kind': kind}
  if kind == 'dense':
    overrides['model.mlp_dim'] = model_lib.dense_mlp_dim_matching(cfg.model)
  c = config_lib.apply_overrides(cfg, overrides)
  config_lib.validate(c)
  return c


def host_allocator() -> str:
  """What serves this process's host allocations, from its loaded libraries (tcmalloc is an opt-in
  preload: launch/with_tcmalloc.sh)."""
  try:
    with open('/proc/self/maps', encoding='utf-8') as f:
      maps = f.read()
  except OSError:
    return 'unknown'
  for name in ('tcmalloc', 'jemalloc', 'mimalloc'):
    if name in maps:
      return name
  return 'glibc'


def measure_matmul_peak(n: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """Best achieved FLOP/s of an n×n×n matmul on the default device (the MFU denominator)."""
  import jax  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return {'platform': jax.default_backend(), 'device_kind': device.device_kind,
          'devices': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine(), 'python': platform.python_version(),
          'jax': jax.__version__, 'host_allocator': host_allocator()}

"""The least gradient accumulation with which an experiment's train step fits a GPU topology, found by
compiling the step for that topology on this machine (no GPU; `pip install -e '.[gpu-compile]'`, and cuDNN
for bf16's default cuDNN attention: see docs/scaling.md).

  python benchmarks/gpu_fit.py --configs=experiments/pile.py:150m,experiments/progressive.py:354m \
      --topologies=h100:1,h100:8,h200:1,h200:8 --json=benchmarks/results/gpu_fit.json

For each config and topology the step is compiled (aot.compile_train_step, the config as it is apart from
train.grad_accum) at 1 and 2 sequences per device per micro-batch; the bytes per device grow about
linearly in that number, so the two give a first guess of the largest power of two that fits; from
there a bisection over powers of two, by compiling, finds the largest that fits. Every compile is a row of the
JSON, written as it comes; the table printed at the end has, per pair, the largest power-of-two
micro-batch that fits and so the least grad_accum, or the 1-sequence row where nothing fits.
"""
import importlib.metadata
import json
import time

from absl import flags

import harness

from tokenformer_jax.runtime import aot
from tokenformer_jax.runtime import gpu_aot
from tokenformer_jax.runtime import sharding
from tokenformer_jax import config as config_lib
from tokenformer_jax.errors import UserError

_CONFIGS = flags.DEFINE_list('configs', ['experiments/pile.py:150m'], 'Experiment files (FILE:ARG).')
_TOPOLOGIES = flags.DEFINE_list('topologies', ['h100:8'], '--mode=compile topologies.')
_JSON = flags.DEFINE_string('json', None, 'Write every compile here as a JSON list of rows.')
_TABLE_FROM = flags.DEFINE_string('table_from', None, 'Only print the table of this JSON (no compiles).')
GIB = aot.GIB


def compile_row(spec: str, topology: str, micro: int, per_device: int) -> dict:
  """One compile of `spec` for `topology` with `micro` sequences per device per micro-batch."""
  cfg = config_lib.load_experiment(spec, {'train.grad_accum': per_device // micro})
  start = time.perf_counter()
  result = aot.compile_train_step(cfg, topology)
  return {'config': spec, 'topology': topology, 'device_kind': result['device_kind'],
          'micro_batch_per_device': micro, 'grad_accum': cfg.train.grad_accum,
          'batch_size': cfg.train.batch_size, 'mesh': result['mesh_shape'], 'remat': result['remat'],
          'dtype': result['dtype'], 'attention': result['attention_impl'],
          'cudnn_attention_calls': result['cudnn_attention_calls'],
          'total_gib': result['memory']['total'] / GIB, 'budget_gib': result['budget'] / GIB,
          'cudnn_workspace_gib': result['memory']['cudnn_workspace'] / GIB,
          'fits': result['memory']['total'] <= result['budget'],
          'wall_s': time.perf_counter() - start}


def rows_per_device(spec: str, topology: str) -> int:
  """Sequences of one step on one device: the batch split over the batch's mesh axes of the config's
  mesh on this topology (the devices are compile-only: nothing is compiled here)."""
  cfg = config_lib.load_experiment(spec)
  mesh = sharding.make_mesh(cfg.mesh, devices=gpu_aot.topology_devices(gpu_aot.parse_topology(topology)))
  return sharding.batch_sharding(mesh, cfg.sharding_rules, 2).shard_shape((cfg.train.batch_size, 1))[0]


def search(spec: str, topology: str, record) -> dict:
  """The row of the largest power-of-two micro-batch that fits (the 1-sequence row if none does): the
  linear estimate from 1 and 2 sequences is the first guess, then a bisection between powers of two
  known to fit and not to fit, so the answer is a compiled fact, not the estimate."""
  per_device = rows_per_device(spec, topology)
  compiled = {}

  def fits(micro: int) -> bool:
    if micro not in compiled:
      compiled[micro] = record(compile_row(spec, topology, micro, per_device))
    return compiled[micro]['fits']

  if not fits(1) or per_device == 1 or not fits(2):
    return compiled[1]
  one, two = compiled[1], compiled[2]
  slope = max(two['total_gib'] - one['total_gib'], 1e-9)
  guess = 2
  while guess * 2 <= per_device and one['total_gib'] + (guess * 2 - 1) * slope <= one['budget_gib']:
    guess *= 2
  fitting, failing = 2, None            # powers of two known to fit / not to fit
  if guess > fitting:
    fitting, failing = (guess, None) if fits(guess) else (fitting, guess)
  while True:
    if failing is None:
      if fitting * 2 > per_device:
        break
      fitting, failing = (fitting * 2, None) if fits(fitting * 2) else (fitting, fitting * 2)
    elif failing == fitting * 2:
      break
    else:
      middle = 2 ** ((fitting.bit_length() + failing.bit_length()) // 2 - 1)
      fitting, failing = (middle, failing) if fits(middle) else (fitting, middle)
  return compiled[fitting]


def table(rows: list[dict]) -> str:
  """Per config and topology: the least grad_accum that fits, and what half of it would need."""
  pairs = {}
  for r in rows:
    pairs.setdefault((r['config'], r['topology']), []).append(r)
  lines = ['| config | GPUs | grad_accum (sequences per GPU per micro-batch) | GiB per GPU (% of JAX\'s pool) | '
           'at half the grad_accum | compile s |', '|---|---|---|---|---|---|']
  for (spec, topology), compiled in pairs.items():
    fitting = [r for r in compiled if r['fits']]
    best = max(fitting or compiled, key=lambda r: r['micro_batch_per_device'] * (1 if fitting else -1))
    half = [r for r in compiled if r['micro_batch_per_device'] == 2 * best['micro_batch_per_device']]
    gib = lambda r: f'{r["total_gib"]:.2f} ({100 * r["total_gib"] / r["budget_gib"]:.0f}%)'
    lines.append(
        f'| {spec.split("/")[-1]} | {topology} | {best["grad_accum"]} ({best["micro_batch_per_device"]}) | '
        f'{gib(best) if best["fits"] else gib(best) + ": does not fit"} | '
        f'{gib(half[0]) + ": does not fit" if half else "(one micro-batch already)"} | '
        f'{best["wall_s"]:.0f} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if _TABLE_FROM.value:
    with open(_TABLE_FROM.value, encoding='utf-8') as f:
      print(table(json.load(f)['rows']))
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_platforms', 'cpu')   # compiles only, as --mode=compile
  rows = []
  machine = {**harness.machine(), 'jax_cuda12_plugin': importlib.metadata.version('jax-cuda12-plugin')}

  def record(row):
    rows.append(row)
    print(f'{row["config"]} {row["topology"]}: micro {row["micro_batch_per_device"]} grad_accum '
          f'{row["grad_accum"]}: {row["total_gib"]:.2f} of {row["budget_gib"]:.2f} GiB '
          f'({"fits" if row["fits"] else "does not fit"}), {row["wall_s"]:.0f} s', flush=True)
    if _JSON.value:
      with open(_JSON.value, 'w', encoding='utf-8') as f:
        json.dump({'machine': machine, 'rows': rows}, f, indent=1)
    return row

  for spec in _CONFIGS.value:
    for topology in _TOPOLOGIES.value:
      try:
        search(spec, topology, record)
      except UserError as e:
        raise UserError(f'{spec} on {topology}: {e}') from None
  print(table(rows))


if __name__ == '__main__':
  harness.run(main)

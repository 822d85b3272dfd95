"""What Pattention's norm and GELU cost on top of its two matmuls: the profile that decides whether a
fused Pattention kernel (matmul → norm → GELU → matmul in one pass) is worth writing.

For each Pattention shape of a config (d → n_qkv → d for q, k, v; d → n_proj → d; d → n_ffn → d) over
the config's batch × seq tokens, three functions of the same two matmuls, forward and forward+backward:

  pattention     y = GELU(τ·S/‖S‖) V with S = x Kᵀ (tokenformer_jax.model.pattention, our hand-written backward)
  gelu_mlp       y = GELU(S) V: a dense MLP's cost, the same passes without the norm (the same GELU)
  matmuls        y = S V: the floor a fused kernel could at best approach

Locally (CPU or GPU) the three alternate call by call and the median time is reported. With --topology
the functions are compiled ahead of time for one chip of that TPU (no TPU needed) and XLA:TPU's own cost
model is reported instead: its estimated seconds ('optimal_seconds'), FLOPs, transcendentals and HBM bytes.
The last lines give the norm's overhead for a whole block (3 × qkv + proj + ffn).

  python benchmarks/pattention_cost.py --config=experiments/bench.py:b
  python benchmarks/pattention_cost.py --config=experiments/progressive.py:354m --dtype=bfloat16
  python benchmarks/pattention_cost.py --config=experiments/progressive.py:354m --topology=v5p:1x1x1
"""
import functools
import json
import statistics
import time

from absl import flags
from ml_collections import config_flags

import harness

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from tokenformer_jax import config as config_lib  # noqa: E402
from tokenformer_jax.model.pattention import gelu, pattention  # noqa: E402
from tokenformer_jax.runtime import aot  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment file (path.py[:arg]): its d_model, n_qkv, n_proj, n_ffn, batch and seq.',
    lock_config=True)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of x and tables.')
_TOPOLOGY = flags.DEFINE_string('topology', '', 'Compile for one chip of this TPU (e.g. v5p:1x1x1) and '
                                'report XLA:TPU\'s cost model instead of timing locally.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed rounds (local runs).', lower_bound=1)
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')

VARIANTS = ('pattention', 'gelu_mlp', 'matmuls')


def _variant(name: str, dtype, gelu_impl: str):
  def gelu_mlp(x, keys, values):
    return gelu(x @ keys.astype(dtype).T, gelu_impl) @ values.astype(dtype)

  def matmuls(x, keys, values):
    return (x @ keys.astype(dtype).T) @ values.astype(dtype)

  return {'pattention': functools.partial(pattention, gelu_impl=gelu_impl), 'gelu_mlp': gelu_mlp,
          'matmuls': matmuls}[name]


def _functions(name: str, dtype, gelu_impl: str):
  """fwd(x, K, V, w) and fwd+bwd (gradients of x, K and V) of one variant, as a scalar loss ⟨y, w⟩."""
  f = _variant(name, dtype, gelu_impl)
  loss = lambda x, k, v, w: jnp.sum((f(x, k, v) * w).astype(jnp.float32))
  return {'fwd': loss, 'fwd+bwd': jax.grad(loss, argnums=(0, 1, 2))}


def layer_shapes(c) -> dict:
  """Pattention layers of one block: name → (d_in, n, d_out, count per block)."""
  m = c.model
  layers = {'qkv': (m.d_model, m.n_qkv, m.d_model, 3), 'proj': (m.d_model, m.n_proj, m.d_model, 1),
            'ffn': (m.d_model, m.n_ffn, m.d_model, 1)}
  if m.n_proj == m.n_qkv:   # the same shape: one measurement, counted four times
    layers['qkv'] = (m.d_model, m.n_qkv, m.d_model, 4)
    del layers['proj']
  return layers


def _cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  analysis = (analysis[0] if isinstance(analysis, list) else analysis) or {}
  keys = {'optimal_seconds': 'model_s', 'flops': 'flops', 'transcendentals': 'transcendentals',
          'bytes accessed': 'bytes'}
  cost = {ours: float(analysis[theirs]) for theirs, ours in keys.items() if theirs in analysis}
  if 'flops' in cost:
    cost.setdefault('transcendentals', 0.0)   # left out where there are none
  return cost


def measure(c, dtype, topology: str) -> list:
  """One row per (layer, variant, mode): compiled on the TPU topology (cost model) or timed here."""
  tokens = c.train.batch_size * c.data.seq_len
  if topology:
    device = aot.topology_devices(aot.parse_topology(topology))[0]
  else:
    device = jax.devices()[0]
  mesh = jax.sharding.Mesh(np.array([device]), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  gelu_impl = config_lib.resolve_model(c.model, device.platform).gelu_impl   # the target chip's form
  rows = []
  for layer, (d_in, n, d_out, count) in layer_shapes(c).items():
    arg_shapes = [((tokens, d_in), dtype), ((n, d_in), jnp.float32), ((n, d_out), jnp.float32),
               ((tokens, d_out), dtype)]
    abstract = [jax.ShapeDtypeStruct(s, t, sharding=replicated) for s, t in arg_shapes]
    runs = []
    for variant in VARIANTS:
      for mode, fn in _functions(variant, dtype, gelu_impl).items():
        compiled = jax.jit(fn).lower(*abstract).compile()
        row = {'layer': layer, 'd_in': d_in, 'n': n, 'd_out': d_out, 'per_block': count,
               'tokens': tokens, 'variant': variant, 'mode': mode, 'gelu_impl': gelu_impl,
               **_cost(compiled)}
        rows.append(row)
        runs.append((row, compiled))
    if not topology:
      _time_alternating(runs, arg_shapes)
  return rows


def _time_alternating(runs, arg_shapes):
  """Each compiled function in turn, --steps rounds; stores the median seconds in its row."""
  rng = np.random.default_rng(0)
  args = [jnp.asarray(rng.normal(size=s) * (0.02 if i in (1, 2) else 1.0), t)
          for i, (s, t) in enumerate(arg_shapes)]
  for _, compiled in runs:
    jax.block_until_ready(compiled(*args))
  times = [[] for _ in runs]
  for _ in range(_STEPS.value):
    for i, (_, compiled) in enumerate(runs):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times[i].append(time.perf_counter() - start)
  for (row, _), ts in zip(runs, times):
    row['measured_s'] = statistics.median(ts)


def block_overheads(rows: list, key: str) -> dict:
  """Per mode: Pattention's time over gelu_mlp's and over the bare matmuls', summed over one block."""
  out = {}
  for mode in ('fwd', 'fwd+bwd'):
    total = {v: sum(r[key] * r['per_block'] for r in rows if r['variant'] == v and r['mode'] == mode)
             for v in VARIANTS}
    out[mode] = {'pattention_s': total['pattention'], 'over_gelu_mlp': total['pattention'] / total['gelu_mlp'],
                 'over_matmuls': total['pattention'] / total['matmuls']}
  return out


def main(argv):
  if len(argv) > 1:
    raise harness.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  c = harness.of_kind(config_lib.from_flag(_CONFIG), 'tokenformer')
  if _TOPOLOGY.value:
    aot.parse_topology(_TOPOLOGY.value)
  rows = measure(c, jnp.dtype(_DTYPE.value), _TOPOLOGY.value)
  key = 'model_s' if _TOPOLOGY.value else 'measured_s'
  where = (f'XLA:TPU cost model, one {_TOPOLOGY.value.split(":")[0]} chip' if _TOPOLOGY.value
           else f'measured on {jax.devices()[0].device_kind}, median of {_STEPS.value}')
  print(f'{rows[0]["tokens"]} tokens, {_DTYPE.value}; milliseconds ({where})')
  print(f"{'layer':6} {'d→n→d':>16} {'mode':8} " + ' '.join(f'{v:>11}' for v in VARIANTS) +
        f" {'vs gelu_mlp':>12} {'vs matmuls':>11}")
  for layer in dict.fromkeys(r['layer'] for r in rows):
    for mode in ('fwd', 'fwd+bwd'):
      by = {r['variant']: r for r in rows if r['layer'] == layer and r['mode'] == mode}
      shape = f"{by['matmuls']['d_in']}→{by['matmuls']['n']}→{by['matmuls']['d_out']}"
      print(f'{layer:6} {shape:>16} {mode:8} ' + ' '.join(f'{by[v][key] * 1e3:11.4g}' for v in VARIANTS) +
            f" {by['pattention'][key] / by['gelu_mlp'][key]:12.3f} "
            f"{by['pattention'][key] / by['matmuls'][key]:11.3f}")
  overheads = block_overheads(rows, key)
  for mode, o in overheads.items():
    print(f"block {mode}: Pattention / GELU MLP {o['over_gelu_mlp']:.3f}, "
          f"Pattention / matmuls alone {o['over_matmuls']:.3f}")
  if _JSON.value:
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'config': c.to_dict(), 'dtype': _DTYPE.value, 'machine': harness.machine(),
                 'topology': _TOPOLOGY.value, 'device': str(jax.devices()[0].device_kind),
                 'timing': key, 'block': overheads, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  harness.run(main)

"""Runs in its own process with 8 virtual CPU devices (XLA_FLAGS set by tests/runtime/mesh_test.py).

Prints one JSON object: for each mesh, the loss and gradients' largest deviation from the 1-device
result, the per-device shard shapes of every Pattention table and its Adam moments, and the shapes
produced by all-gathers in the compiled train step.
"""
import json
import re
import sys

import jax
import numpy as np

from tests.helpers import small_config
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step as step_lib

MESHES = [(8, 1, 1), (2, 2, 2), (1, 1, 8), (1, 4, 2)]
VOCAB = 128


def config(mesh_sizes):
  c = small_config()
  c.model.n_qkv, c.model.n_proj, c.model.n_ffn = 128, 192, 512  # distinct, to recognise tables
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh_sizes
  return c


def loss_and_grads(mesh_sizes, tokens):
  c = config(mesh_sizes)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:int(np.prod(mesh_sizes))])
  spec = state_lib.make_spec(c, VOCAB, mesh)
  state = state_lib.init_state(spec, c)
  batch = step_lib.global_batch(spec, c, tokens)
  loss_fn = lambda p, t: step_lib.token_losses(spec, p, t).mean()
  grad_fn = jax.jit(jax.value_and_grad(loss_fn),
                    in_shardings=(spec.shardings['params'], batch.sharding))
  loss, grads = grad_fn(state['params'], batch)
  return c, spec, state, float(loss), jax.tree.map(np.asarray, grads)


def shard_shapes(state):
  out = {}
  adam = state['opt_state'][1][0]
  for name in ('query', 'key', 'value', 'proj', 'mlp'):
    for table in ('key_tokens', 'value_tokens'):
      for label, tree in (('param', state['params']), ('mu', adam.mu), ('nu', adam.nu)):
        x = tree['blocks'][name][table]
        out[f'{label}/{name}/{table}'] = list(x.sharding.shard_shape(x.shape))
  return out


def all_gather_shapes(spec, c):
  batch = jax.ShapeDtypeStruct((c.train.batch_size, c.data.seq_len + 1), np.int32,
                               sharding=sharding.batch_sharding(spec.mesh, c.sharding_rules, 2))
  hlo = step_lib.make_train_step(spec, c).lower(state_lib.abstract_targets(spec), batch).compile()
  shapes = re.findall(r'= \(?\w+\[([\d,]*)\][^ ]* all-gather(?:-start)?\(', hlo.as_text())
  return [[int(d) for d in s.split(',') if d] for s in shapes]


def main():
  assert jax.device_count() == 8, jax.device_count()
  tokens = np.random.default_rng(0).integers(0, VOCAB, (8, 65)).astype(np.int32)
  _, _, _, ref_loss, ref_grads = loss_and_grads((1, 1, 1), tokens)
  report = {}
  for mesh_sizes in MESHES:
    c, spec, state, loss, grads = loss_and_grads(mesh_sizes, tokens)
    dev = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
              for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
    report[str(mesh_sizes)] = {
        'loss': loss, 'ref_loss': ref_loss, 'grad_rel_dev': dev,
        'shard_shapes': shard_shapes(state), 'all_gathers': all_gather_shapes(spec, c)}
  json.dump(report, sys.stdout)


if __name__ == '__main__':
  main()

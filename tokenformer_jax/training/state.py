"""The train state as a plain pytree, its abstract shapes and shardings, and sharded initialisation.

state = {'params': nested dict of arrays (nnx pure dict), 'opt_state': optax state, 'step': int32}.
The model's graph definition stays outside the state, so jit in/out shardings and Orbax see only arrays.
Initialisation follows eval_shape → shardings → jit(init, out_shardings): no array is ever materialised
whole on one host.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from tokenformer_jax import config as config_lib
from tokenformer_jax.model import transformer as model_lib
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import growth_layout
from tokenformer_jax.training import optimizer


@dataclasses.dataclass(frozen=True)
class StateSpec:
  """What is static about a train state: model graph, optimizer, shapes and shardings."""
  graphdef: Any
  model_cfg: Any       # cfg.model with the platform defaults resolved (config.resolve_model)
  tx: optax.GradientTransformation
  abstract: Any        # ShapeDtypeStruct tree of the state
  shardings: Any       # NamedSharding tree of the state
  mesh: Mesh
  vocab_size: int
  lr_schedule: optax.Schedule   # the one the optimizer follows; the train step logs its value


def new_part_multipliers(abstract_params, m, grown_from: dict):
  """optimizer.frozen_rows masks that train only what a growth added (growth's freeze_old): new tokens,
  new blocks and the width copies past the first; `grown_from` is the grown checkpoint's record."""
  growth = growth_layout.from_record(grown_from, m)
  d_src = int(m.d_model) // growth.width

  def masks(path, leaf):
    parts = tuple(jax.tree_util.keystr(path, simple=True, separator='/').split('/'))
    return growth_layout.old_masks(parts, leaf.shape, growth, d_src)
  return jax.tree_util.tree_map_with_path(masks, abstract_params)


def make_spec(cfg, vocab_size: int, mesh: Mesh, grown_from: dict | None = None) -> StateSpec:
  """The spec of cfg's train state on `mesh`; given a grown checkpoint's record (`grown_from`, for
  growth.freeze_old) the optimizer updates only what that growth added."""
  model_cfg = config_lib.resolve_model(cfg.model, mesh.devices.flat[0].platform, cfg.data.seq_len)
  abstract_model = model_lib.abstract_model(model_cfg, vocab_size)
  graphdef, param_state = nnx.split(abstract_model, nnx.Param)
  logical = nnx.to_pure_dict(nnx.get_partition_spec(param_state))
  abstract_params = nnx.to_pure_dict(param_state)
  params_sh = sharding.param_shardings(logical, abstract_params, mesh, cfg.sharding_rules)
  multipliers = None if grown_from is None else new_part_multipliers(abstract_params, cfg.model, grown_from)
  lr_schedule = optimizer.schedule(cfg.optimizer, cfg.train.steps)
  tx = optimizer.make_optimizer(cfg.optimizer, lr_schedule, multipliers)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  rep = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, params_sh,
                                 transform_non_params=lambda _: rep)
  abstract = {'params': abstract_params, 'opt_state': abstract_opt,
              'step': jax.ShapeDtypeStruct((), jnp.int32)}
  shardings = {'params': params_sh, 'opt_state': opt_sh, 'step': rep}
  return StateSpec(graphdef, model_cfg, tx, abstract, shardings, mesh, vocab_size, lr_schedule)


def abstract_targets(spec: StateSpec):
  """ShapeDtypeStructs carrying this mesh's shardings: restore targets for Orbax."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      spec.abstract, spec.shardings)


def init_state(spec: StateSpec, cfg):
  """Fresh parameters (seeded by cfg.seed) and optimizer state, created directly sharded."""
  def init():
    model = model_lib.build(spec.model_cfg, spec.vocab_size, cfg.seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {'params': params, 'opt_state': spec.tx.init(params), 'step': jnp.zeros((), jnp.int32)}
  return jax.jit(init, out_shardings=spec.shardings)()


def from_params(spec: StateSpec, params):
  """A state at step 0 around given parameters: a fresh optimizer state (Adam moments zero)."""
  opt_state = jax.jit(spec.tx.init, out_shardings=spec.shardings['opt_state'])(params)
  return {'params': params, 'opt_state': opt_state,
          'step': jax.device_put(np.zeros((), np.int32), spec.shardings['step'])}


def merge(spec: StateSpec, params) -> model_lib.Decoder:
  """A callable model over these parameters (usable inside jit)."""
  return nnx.merge(spec.graphdef, params)


def num_params(spec: StateSpec) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(spec.abstract['params']))

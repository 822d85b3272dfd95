"""Mesh from the config, logical-axis rules, and the shardings of abstract state.

Parameters carry logical axis names (e.g. ('layers', 'param_tokens', 'embed')); the config's
`sharding_rules` map each name to mesh axes through flax's logical-axis rules (flax.linen.
logical_to_mesh_axes: rules in order of precedence, each mesh axis used at most once per array). On top of
them, a dimension is sharded only when its size divides evenly — otherwise a clear error, never a silent
replication.
"""
import contextlib
import threading
from typing import Any, Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from tokenformer_jax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')


def _resolve(sizes: Sequence[int], total: int, what: str) -> list[int]:
  """Replaces a single -1 by whatever is left of `total`."""
  sizes = list(sizes)
  if sizes.count(-1) > 1:
    raise UserError(f'at most one {what} mesh size may be -1, got {sizes}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or total % known:
    raise UserError(f'{what} mesh sizes {sizes} do not fit {total} devices')
  sizes = [total // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != total:
    raise UserError(f'{what} mesh sizes {sizes} use {int(np.prod(sizes))} devices, not {total}')
  return sizes


def make_mesh(cfg_mesh, devices: Sequence[Any] | None = None) -> Mesh:
  """The (data, fsdp, tensor) mesh; several slices (DCN sizes > 1) get a hybrid device mesh."""
  devices = list(jax.devices() if devices is None else devices)
  dcn = [cfg_mesh.dcn_data, cfg_mesh.dcn_fsdp, cfg_mesh.dcn_tensor]
  num_slices = int(np.prod(dcn))
  if num_slices < 1 or len(devices) % num_slices:
    raise UserError(f'DCN mesh sizes {dcn} do not divide {len(devices)} devices')
  ici = _resolve([cfg_mesh.data, cfg_mesh.fsdp, cfg_mesh.tensor], len(devices) // num_slices, 'ICI')
  if num_slices > 1:
    # The DCN axes run between the units that only the network joins: TPU slices, and on GPUs the hosts
    # (NVLink joins the GPUs of one host). JAX gives GPU devices no slice index that tells hosts apart
    # (the compile-only ones all carry 0), so GPUs are grouped by process.
    by_host = devices[0].platform in ('gpu', 'cuda', 'rocm')
    units = {d.process_index if by_host else getattr(d, 'slice_index', 0) for d in devices}
    if len(units) != num_slices:
      raise UserError(f'DCN mesh sizes {dcn} need {num_slices} {"hosts" if by_host else "slices"}; the '
                      f'devices are on {len(units)}')
    device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_host)
  else:
    device_array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None], rules) -> PartitionSpec:
  """Maps logical names to a PartitionSpec with flax's rules: a rule claims a dimension only while all
  its mesh axes are still free in that array, so an axis is used at most once (the later claimant is
  replicated). Rules may come back from a config override as lists; flax wants tuples."""
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
  return nn.logical_to_mesh_axes(tuple(names), rules)


def named_sharding(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh, rules,
                   what: str = 'array') -> NamedSharding:
  spec = logical_to_spec(names, rules)
  for dim, axes in zip(shape, spec):
    if axes is None:
      continue
    size = int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))
    if dim % size:
      raise UserError(f'{what}: dimension {dim} ({names}) is not divisible by mesh axes {axes} '
                      f'of size {size}')
  return NamedSharding(mesh, spec)


def param_shardings(logical_specs, abstract_params, mesh: Mesh, rules):
  """Shardings for a params tree, from a matching tree of logical PartitionSpecs."""
  def one(path, spec, leaf):
    return named_sharding(leaf.shape, tuple(spec), mesh, rules, what=jax.tree_util.keystr(path))
  return jax.tree_util.tree_map_with_path(
      one, logical_specs, abstract_params, is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch(mesh: Mesh, rules, batch_size: int, grad_accum: int) -> None:
  """Each micro-batch (batch_size / grad_accum rows) must split evenly over the batch's mesh axes."""
  axes = logical_to_spec(('batch',), rules)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  shards = int(np.prod([mesh.shape[a] for a in axes]))
  micro = batch_size // grad_accum
  if micro % shards:
    what = f'train.batch_size={batch_size}' + (f' / train.grad_accum={grad_accum}' if grad_accum > 1 else '')
    raise UserError(f'{what} = {micro} rows per step is not divisible by the {shards} batch shards of '
                    f'the mesh (axes {axes} of {dict(mesh.shape)}): pick a multiple of {shards}')


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Batch arrays: leading axis over the 'batch' rule's mesh axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(('batch',) + (None,) * (ndim - 1), rules))


# Activation constraints. The model names its activations' logical axes (sharding.constrain) without
# knowing the mesh; a train or eval step traces the model inside `activation_sharding(mesh, rules)`,
# which turns those names into constraints. Outside it (e.g. generation) constrain does nothing.
_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  previous = getattr(_ACTIVE, 'value', None)
  _ACTIVE.value = (mesh, rules)
  try:
    yield
  finally:
    _ACTIVE.value = previous


def active():
  """(mesh, rules) of the enclosing `activation_sharding`, or None outside one."""
  return getattr(_ACTIVE, 'value', None)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins x's sharding to its logical axis names under the active mesh and rules (else a no-op).
  Without it XLA may shard activations along the model dimension and replicate the batch."""
  active = getattr(_ACTIVE, 'value', None)
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules)))

"""Mesh construction and logical-axis rules (single device here; multi-device meshes in their own test)."""
import jax
import pytest
from jax.sharding import PartitionSpec

from tokenformer_jax.config import base_config
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import sharding

RULES = base_config().sharding_rules


def test_mesh_resolves_rest_axis():
  mesh = sharding.make_mesh(base_config().mesh)
  assert mesh.axis_names == ('data', 'fsdp', 'tensor')
  assert mesh.devices.size == jax.device_count()


def test_bad_mesh_sizes():
  cfg = base_config().mesh
  cfg.data, cfg.fsdp = -1, -1
  with pytest.raises(UserError, match='at most one'):
    sharding.make_mesh(cfg)
  cfg.data, cfg.fsdp, cfg.tensor = 1, 1, 3
  with pytest.raises(UserError, match='do not fit'):
    sharding.make_mesh(cfg)


def test_logical_rules_shard_the_token_axis():
  assert sharding.logical_to_spec(('layers', 'param_tokens', 'embed'), RULES) == PartitionSpec(
      None, 'tensor', 'fsdp')
  assert sharding.logical_to_spec(('batch', None), RULES) == PartitionSpec(('data', 'fsdp'), None)
  # a mesh axis is used once per array: 'embed' wants fsdp, which 'batch' (an earlier rule) holds
  assert sharding.logical_to_spec(('batch', 'embed'), RULES) == PartitionSpec(('data', 'fsdp'), None)
  assert sharding.logical_to_spec(('embed', 'batch'), RULES) == PartitionSpec(None, ('data', 'fsdp'))
  # rules overridden from the command line arrive as lists
  assert sharding.logical_to_spec(('batch',), [['batch', ['data']]]) == PartitionSpec('data')

"""Mesh construction and logical-axis rules (single device here, and an abstract 2×2 mesh for the parameter
shardings; multi-device meshes in their own test)."""
import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from tests.helpers import small_config
from tokenformer_jax import config as config_lib
from tokenformer_jax.config import base_config
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import transformer as model_lib
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


# What the default rules give every parameter on a data=1 × fsdp=2 × tensor=2 mesh: the token axis and
# the vocabulary over `tensor`, the model dimension over `fsdp`, the layer stack and norms whole. The dense
# baseline's heads and hidden units go over `tensor` too. (The Adam moments take their parameter's.)
TOKEN_TABLE = PartitionSpec(None, 'tensor', 'fsdp')
EXPECTED_SPECS = {
    'tokenformer': {
        **{f'blocks/{layer}/{table}': TOKEN_TABLE for layer in ('query', 'key', 'value', 'proj', 'mlp')
           for table in ('key_tokens', 'value_tokens')},
        'embedding': PartitionSpec('tensor', 'fsdp'),
        'final_norm_scale': PartitionSpec(None), 'final_norm_bias': PartitionSpec(None),
    },
    'dense': {
        **{f'blocks/{layer}/kernel': PartitionSpec(None, 'fsdp', 'tensor')
           for layer in ('query', 'key', 'value')},
        'blocks/proj/kernel': PartitionSpec(None, 'tensor', 'fsdp'),
        'blocks/mlp/up/kernel': PartitionSpec(None, 'fsdp', 'tensor'),
        'blocks/mlp/down/kernel': PartitionSpec(None, 'tensor', 'fsdp'),
        'embedding': PartitionSpec('tensor', 'fsdp'),
        'final_norm_scale': PartitionSpec(None), 'final_norm_bias': PartitionSpec(None),
    },
}


@pytest.mark.parametrize('kind', sorted(EXPECTED_SPECS))
def test_default_rules_shard_every_parameter_as_the_table_says(kind):
  c = small_config()
  c.model.kind = kind
  m = config_lib.resolve_model(c.model, 'cpu', c.data.seq_len)
  _, param_state = nnx.split(model_lib.abstract_model(m, 512), nnx.Param)
  logical = nnx.to_pure_dict(nnx.get_partition_spec(param_state))
  mesh = AbstractMesh((1, 2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  shardings = sharding.param_shardings(logical, nnx.to_pure_dict(param_state), mesh, c.sharding_rules)
  specs = {jax.tree_util.keystr(path, simple=True, separator='/'): s.spec
           for path, s in jax.tree_util.tree_leaves_with_path(shardings)}
  assert specs == EXPECTED_SPECS[kind]
  assert sharding.batch_sharding(mesh, c.sharding_rules, 2).spec == PartitionSpec(('data', 'fsdp'), None)

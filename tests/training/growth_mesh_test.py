"""Growth across a mesh change: saved on 8 devices as (2,2,2), grown onto 4 devices as (2,1,2) in
another process, gives exactly what growing on one device gives, and the same logits as before; and
likewise for growth in depth, width and tokens at once, for both kinds."""
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from tests.helpers import FAST, ROOT, TINY
from tokenformer_jax.checkpoints import store
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import growth
from tokenformer_jax.training import state as state_lib

pytestmark = pytest.mark.slow

GROWN = ['--config.model.n_qkv=48', '--config.model.n_proj=40', '--config.model.n_ffn=96']


def cli(devices, *args):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}', *FAST,
                         *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


def logits(spec, params, tokens):
  """Jitted: one compile, not one per op."""
  return np.asarray(jax.jit(lambda p: state_lib.merge(spec, p)(tokens))(params))


def restore_on_one_device(workdir):
  mngr = store.manager(workdir)
  meta = store.read_meta(mngr, mngr.latest_step())
  cfg = ml_collections.ConfigDict(meta['config'])
  cfg.mesh.data = cfg.mesh.fsdp = cfg.mesh.tensor = 1
  spec = state_lib.make_spec(cfg, meta['vocab_size'], sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
  return cfg, spec, store.restore(mngr, mngr.latest_step(), state_lib.abstract_targets(spec))


def test_grow_onto_another_mesh(tmp_path):
  src, on_four = str(tmp_path / 'src'), str(tmp_path / 'grown4')
  cache = f'--config.data.cache_dir={tmp_path / "cache"}'
  cli(8, f'--workdir={src}', cache, '--config.train.sample_tokens=0', '--config.mesh.data=2',
      '--config.mesh.fsdp=2',
      '--config.mesh.tensor=2')
  cli(4, '--mode=grow', f'--grow_from={src}', f'--workdir={on_four}', cache, *GROWN,
      '--config.mesh.data=2', '--config.mesh.fsdp=1', '--config.mesh.tensor=2')

  # the same growth on this process's single device
  cfg_src, _, _ = restore_on_one_device(src)
  cfg_b = ml_collections.ConfigDict(cfg_src.to_dict())
  cfg_b.model.n_qkv, cfg_b.model.n_proj, cfg_b.model.n_ffn = 48, 40, 96
  cfg_b.mesh.data = cfg_b.mesh.fsdp = cfg_b.mesh.tensor = 1
  on_one = str(tmp_path / 'grown1')
  growth.grow(cfg_b, src, on_one)

  _, spec4, state4 = restore_on_one_device(on_four)
  _, spec1, state1 = restore_on_one_device(on_one)
  for a, b in zip(jax.tree.leaves(state4), jax.tree.leaves(state1)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  _, spec_src, state_src = restore_on_one_device(src)
  tokens = np.random.default_rng(0).integers(0, 500, (2, 16)).astype(np.int32)
  before, after = logits(spec_src, state_src['params'], tokens), logits(spec4, state4['params'], tokens)
  assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))


DIMS = ['--config.model.num_layers=2', '--config.model.d_model=64', '--config.model.num_heads=4',
        '--config.model.n_qkv=48', '--config.model.n_ffn=96', '--config.growth.depth_placement=interleave']


@pytest.mark.parametrize('kind,meshes', [('tokenformer', ((1, 2, 2), (1, 4, 1))),
                                         ('dense', ((1, 2, 2), (2, 2, 1)))])
def test_grow_deeper_wider_and_more_tokens_onto_another_mesh(tmp_path, kind, meshes):
  """Saved on one device, grown in depth, width ×2 and tokens at once onto 2×2 (fsdp × tensor: each
  device's embedding columns are one whole copy), for TokenFormer onto fsdp 4 (each device copies half
  of the source's columns: the source is read over a split mesh axis), for dense onto data 2 × fsdp 2
  (every shard on two devices): the same arrays as growing on one device, and the same logits."""
  src, cache = str(tmp_path / 'src'), f'--config.data.cache_dir={tmp_path / "cache"}'
  cli(1, f'--workdir={src}', cache, '--config.train.sample_tokens=0', f'--config.model.kind={kind}')
  cfg_src, spec_src, state_src = restore_on_one_device(src)
  cfg_b = ml_collections.ConfigDict(cfg_src.to_dict())
  for flag in DIMS:
    section, key, value = flag[len('--config.'):].replace('=', '.').split('.')
    cfg_b[section][key] = type(cfg_b[section][key])(value)
  on_one = str(tmp_path / 'grown1')
  growth.grow(cfg_b, src, on_one)
  _, spec1, state1 = restore_on_one_device(on_one)
  tokens = np.random.default_rng(0).integers(0, 500, (2, 16)).astype(np.int32)
  before, after = logits(spec_src, state_src['params'], tokens), logits(spec1, state1['params'], tokens)
  assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
  for data, fsdp, tensor in meshes:
    grown = str(tmp_path / f'grown_{data}x{fsdp}x{tensor}')
    cli(4, '--mode=grow', f'--grow_from={src}', f'--workdir={grown}', cache, f'--config.model.kind={kind}',
        *DIMS, f'--config.mesh.data={data}', f'--config.mesh.fsdp={fsdp}', f'--config.mesh.tensor={tensor}')
    _, _, state = restore_on_one_device(grown)
    flat, flat1 = (jax.tree_util.tree_flatten_with_path(s)[0] for s in (state, state1))
    assert [path for path, _ in flat] == [path for path, _ in flat1]
    for (path, a), (_, b) in zip(flat, flat1):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))

"""Sharded training on 8 virtual CPU devices: same loss and gradients as 1 device on every mesh, the
parameter-token axis really sharded (params and Adam moments), and no whole token table all-gathered.

The meshes need their own process (the device count is fixed when JAX starts): tests/runtime/mesh_worker.py.
"""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

L, D = 2, 64
TOKENS = {'query': 128, 'key': 128, 'value': 128, 'proj': 192, 'mlp': 512}


@pytest.fixture(scope='module')
def report():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'tests.runtime.mesh_worker'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('mesh', ['(8, 1, 1)', '(2, 2, 2)', '(1, 1, 8)', '(1, 4, 2)'])
def test_same_loss_and_gradients_as_one_device(report, mesh):
  r = report[mesh]
  assert abs(r['loss'] - r['ref_loss']) <= 1e-5 * abs(r['ref_loss'])
  assert r['grad_rel_dev'] <= 1e-4


@pytest.mark.parametrize('mesh,data,fsdp,tensor', [('(8, 1, 1)', 8, 1, 1), ('(2, 2, 2)', 2, 2, 2),
                                                   ('(1, 1, 8)', 1, 1, 8), ('(1, 4, 2)', 1, 4, 2)])
def test_token_axis_sharded_over_tensor_and_model_dim_over_fsdp(report, mesh, data, fsdp, tensor):
  del data
  shapes = report[mesh]['shard_shapes']
  for name, n in TOKENS.items():
    for table in ('key_tokens', 'value_tokens'):
      for label in ('param', 'mu', 'nu'):
        assert shapes[f'{label}/{name}/{table}'] == [L, n // tensor, D // fsdp], (label, name, table)


@pytest.mark.parametrize('mesh', ['(2, 2, 2)', '(1, 1, 8)', '(1, 4, 2)'])
def test_no_whole_token_table_is_all_gathered(report, mesh):
  whole = {(n, D) for n in TOKENS.values()} | {(L, n, D) for n in TOKENS.values()}
  gathered = {tuple(s) for s in report[mesh]['all_gathers']}
  assert not gathered & whole, gathered & whole
  if mesh == '(1, 1, 8)':  # pure token-axis sharding: partial sums are all-reduced, nothing gathered
    assert not gathered

"""AOT compile for TPU topologies on the CPU: memory and collectives, `does not fit`, bad topologies.

The compiling tests need libtpu (the TPU compiler; `pip install -e '.[tpu]'`) and are skipped without it;
parsing, counting and the error messages are tested either way.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tokenformer_jax.config import experiment_module
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import aot

pile, tiny = (experiment_module(f'{ROOT}/experiments/{name}.py') for name in ('pile', 'tiny'))

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason="libtpu is not installed (pip install -e '.[tpu]')")

# Compiled-HLO shapes the counter must handle: a collective cloned into the fusions that overlap it
# (same channel_id), an async start/done pair, and TPU's reduce-scatter (an all-reduce inside a fusion
# computation named all-reduce-scatter).
HLO = """HloModule jit_train_step
%all-reduce-scatter.1 (input.1: f32[2048,64]) -> f32[1024,64] {
  %all-reduce.9 = f32[2048,64]{0,1} all-reduce(%input.1), channel_id=98, replica_groups={{0,1}}
}
%async_collective_fusion.1 (p: f32[1024,64]) -> f32[2048,64] {
  %all-gather.22 = f32[2048,64]{0,1} all-gather(%p), channel_id=97, dimensions={0}
}
%async_collective_fusion.2 (p: f32[1024,64]) -> f32[2048,64] {
  %all-gather.24 = f32[2048,64]{0,1} all-gather(%p), channel_id=97, dimensions={0}
}
ENTRY %main.52_spmd (param: f32[16]) -> f32[16] {
  %all-reduce.3 = f32[] all-reduce(%x), channel_id=60, to_apply=%add
  %collective-permute-start = (f32[16], f32[16]) collective-permute-start(%param), channel_id=53
  %collective-permute-done = f32[16] collective-permute-done(%collective-permute-start)
  %fusion.5 = f32[1024,64] fusion(%all-reduce.3), kind=kCustom, calls=%all-reduce-scatter.1
}
"""


def tiny_config():
  """experiments/tiny.py over a 2×2 (fsdp × tensor) mesh of the four chips: every rule shards something."""
  c = tiny.get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 2
  return c


def test_parse_topology():
  assert aot.parse_topology('v5e:4x4') == aot.Topology('v5e', (4, 4))
  assert aot.parse_topology('v5p:2x2x1').num_chips == 4
  assert aot.parse_topology('v4:2x2x2').name == 'v4:2x2x2'


@pytest.mark.parametrize('text', ['', 'v5e', 'v5x:2x2', 'v5e:0x2', 'v5e:2x2x2x2', 'v5e-16', 'tpu:2x2', 'b200:8'])
def test_malformed_topology(text):
  with pytest.raises(UserError, match=r'malformed --topology.*v5e:4x4.*GPU one of h100, h200, a100-80g'):
    aot.parse_topology(text)


def test_missing_libtpu(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  monkeypatch.delenv('TPU_LIBRARY_PATH', raising=False)
  with pytest.raises(UserError, match=r"needs libtpu .*pip install 'libtpu==0\.0\.42\.\*'"):
    aot.topology_devices(aot.parse_topology('v5e:2x2'))


def test_count_collectives():
  assert aot.count_collectives(HLO) == {'all-gather': 1, 'all-reduce': 1, 'reduce-scatter': 1,
                                        'all-to-all': 0, 'collective-permute': 1}


def test_check_fits_message():
  result = {'memory': {'total': 17 * aot.GIB}, 'budget': 16 * aot.GIB, 'budget_note': '16 GiB HBM',
            'chip': 'v5e', 'mesh_shape': {'data': 2, 'fsdp': 1, 'tensor': 1}, 'batch_size': 8,
            'grad_accum': 1, 'micro_batch_per_device': 4, 'remat': 'none'}
  with pytest.raises(UserError, match=r'does not fit: 17.00 GiB per device > 16 GiB HBM of v5e .*; to fit: '
                                      r'raise train.grad_accum \(now 1: 4 sequences per device per '
                                      r'micro-batch\); model.remat=block .*; shard parameters and optimizer '
                                      r'state over all devices \(mesh.data=1 mesh.fsdp=-1'):
    aot.check_fits(result)
  result.update(micro_batch_per_device=1, remat='block', mesh_shape={'data': 1, 'fsdp': 2, 'tensor': 1})
  with pytest.raises(UserError, match=r'; to fit: use more chips$'):
    aot.check_fits(result)


@pytest.mark.slow
@needs_libtpu
def test_compile_for_v5e_2x2():
  result = aot.compile_train_step(tiny_config(), 'v5e:2x2')
  assert result['num_devices'] == 4 and result['device_kind'] == 'TPU v5 lite'
  assert result['mesh_shape'] == {'data': 1, 'fsdp': 2, 'tensor': 2}
  memory = result['memory']
  for name in ('arguments', 'outputs', 'total', 'peak'):
    assert memory[name] > 0, name
  assert memory['temporaries'] >= 0 and memory['peak'] <= memory['total']
  assert memory['total'] < result['hbm'] == 16 * aot.GIB
  assert set(result['collectives']) == set(aot.COLLECTIVES)
  assert sum(result['collectives'].values()) > 0      # fsdp and tensor sharding need communication
  # the TPU default attention is the splash kernel (forward, dq and dkv kernels), inside shard_map
  assert result['attention_impl'] == 'splash' and result['pallas_kernels'] == 3
  report = aot.format_report(result)
  assert 'v5e:2x2 (TPU v5 lite, 4 devices)' in report and 'all-reduce' in report
  assert 'attention     splash (3 Pallas kernel calls' in report
  aot.check_fits(result)


@needs_libtpu
def test_1_5b_does_not_fit_one_v5e_chip():
  cfg = pile.get_config('1.5b')
  with pytest.raises(UserError, match=r'does not fit: [\d.]+ GiB per device .*> 16 GiB HBM of v5e'):
    aot.check_fits(aot.compile_train_step(cfg, 'v5e:1x1'))


def run_cli(*args):
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', '--mode=compile',
                         f'--config={os.path.join(ROOT, "experiments", "tiny.py")}', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''


@pytest.mark.slow
def test_cli_bad_topology_needs_no_workdir():
  code, _, line = run_cli('--topology=v5e:4')
  assert code != 0 and line.startswith('error: unknown or malformed --topology'), line
  code, _, line = run_cli()
  assert code != 0 and line == ('error: --mode=compile needs --topology (e.g. --topology=v5p:2x2x1, v5e:4x4 or '
                                  'h100:8)')


@pytest.mark.slow
@needs_libtpu
def test_cli_compile():
  code, out, line = run_cli('--topology=v5e:2x2', '--config.mesh.tensor=2', '--config.model.num_layers=1')
  assert code == 0, line
  assert 'v5e:2x2 (TPU v5 lite, 4 devices)' in out and 'data 2 x fsdp 1 x tensor 2' in out
  assert 'total' in out and 'of 16 GiB HBM' in out and 'collectives' in out

"""AOT compile for NVIDIA GPU topologies on a machine without a GPU: specs, fit, collectives, cuDNN attention.

Which install each test needs:
- none: parsing, the memory fraction, the cuDNN workspace arithmetic, the error messages;
- `pip install -e '.[gpu-compile]'` (JAX's CUDA plugin, ptxas, the CUDA runtime: about 226 MB): the
  compiles with attention_impl=xla;
- also cuDNN (`pip install --no-deps 'nvidia-cudnn-cu12>=9.8,<10'`, 716 MB): the one compile with
  attention_impl=cudnn, for JAX's version check of the library.
"""
import importlib.util
import os
import subprocess
import sys

import jax
import pytest

from tests.helpers import ROOT
from tokenformer_jax.config import experiment_module
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import aot
from tokenformer_jax.runtime import gpu_aot

tiny = experiment_module(f'{ROOT}/experiments/tiny.py')

needs_plugin = pytest.mark.skipif(not gpu_aot.compiler_installed(),
                                  reason=f'the CUDA plugin of JAX is not installed ({gpu_aot.INSTALL})')
needs_cudnn = pytest.mark.skipif(not gpu_aot.cudnn_loadable(),
                                 reason=f'the CUDA plugin of JAX or cuDNN is not installed ({gpu_aot.INSTALL}; '
                                        f'{gpu_aot.CUDNN_INSTALL})')


def tiny_config(**mesh):
  c = tiny.get_config()
  c.model.dtype = 'bfloat16'
  c.model.attention_impl = 'xla'
  for axis, size in mesh.items():
    c.mesh[axis] = size
  return c


def test_parse_topology():
  assert gpu_aot.parse_topology('h100:8') == gpu_aot.GpuTopology('h100', 1, 8)
  two = gpu_aot.parse_topology('h100:2x8')
  assert (two.num_chips, two.pjrt_name, two.name) == (16, '1x2x8', 'h100:2x8')
  assert gpu_aot.parse_topology('a100-80g:1').name == 'a100-80g:1'
  assert gpu_aot.is_gpu_topology('h200:8') and not gpu_aot.is_gpu_topology('v5e:2x2')


@pytest.mark.parametrize('text', ['h100', 'h100:0', 'h100:2x', 'h100:2x8x2', 'h100:x8', 'h100-8'])
def test_malformed_topology(text):
  with pytest.raises(UserError, match='malformed --topology'):
    gpu_aot.parse_topology(text)


def test_more_gpus_than_a_host_has():
  with pytest.raises(UserError, match=r'16 GPUs per host; a host has at most 8 \(write more as hosts: h100:2x8\)'):
    gpu_aot.parse_topology('h100:16')


def test_spec_memory_is_the_chip_memory():
  """The fit reads the device memory from the same spec the compiler gets."""
  assert gpu_aot.device_memory('h100') == 81090 * 2 ** 20
  assert gpu_aot.device_memory('h200') == 143156 * 2 ** 20
  assert gpu_aot.device_memory('a100-80g') == 85051572224


def test_memory_fraction(monkeypatch):
  monkeypatch.delenv('XLA_CLIENT_MEM_FRACTION', raising=False)
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  assert gpu_aot.memory_fraction() == 0.75
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '.9')
  assert gpu_aot.memory_fraction() == 0.9
  monkeypatch.setenv('XLA_CLIENT_MEM_FRACTION', '1.5')
  with pytest.raises(UserError, match=r"XLA_CLIENT_MEM_FRACTION='1.5': expected a fraction"):
    gpu_aot.memory_fraction()


def test_cudnn_workspace_from_hlo():
  hlo = ('  %fwd = (bf16[2,4,128,32]{3,1,2,0}, f32[2,4,128]{2,1,0}, u8[0]{0}) custom-call(%a, %b, %c), '
         'custom_call_target="__cudnn$fmhaSoftmax", api_version=API_VERSION_STATUS_RETURNING\n'
         '  %bwd = (bf16[2,4,128,32]{3,1,2,0}, bf16[2,4,128,32]{3,1,2,0}, bf16[2,4,128,32]{3,1,2,0}, '
         'u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$fmhaSoftmaxBackward", api_version=1\n')
  assert gpu_aot.cudnn_attention_calls(hlo) == 2
  assert gpu_aot.cudnn_workspace_bytes(hlo) == 2 * 4 * 128 * (32 + 1) * 4   # float32 dQ and row sums
  assert gpu_aot.cudnn_workspace_bytes('no attention here') == 0


def test_missing_plugin(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(UserError, match=r"needs the CUDA plugin of JAX .*pip install -e '\.\[gpu-compile\]'"):
    gpu_aot.topology_devices(gpu_aot.parse_topology('h100:1'))


def test_missing_cudnn_names_the_install(monkeypatch):
  monkeypatch.setattr(gpu_aot, 'compiler_installed', lambda: False)
  with pytest.raises(UserError, match=r"attention_impl=cudnn .* needs the cuDNN library .*pip install "
                                      r"--no-deps 'nvidia-cudnn-cu12>=9.8,<10' \(716 MB\), or compile with "
                                      r'--config.model.attention_impl=xla'):
    gpu_aot.require_cudnn()


def test_cudnn_is_missing_where_jax_refuses_a_cudnn_attention(monkeypatch):
  """The probe is JAX's own check: where tracing a cuDNN attention raises (as JAX does when cuDNN does
  not load), cuDNN counts as missing."""
  monkeypatch.setattr(gpu_aot, 'compiler_installed', lambda: True)

  def refuse(*args, **kwargs):
    raise RuntimeError('cuDNN is not detected.')
  monkeypatch.setattr(jax.nn, 'dot_product_attention', refuse)
  assert not gpu_aot.cudnn_loadable()


@needs_plugin
@pytest.mark.parametrize('chip', [chip if chip == 'h100' else pytest.param(chip, marks=pytest.mark.slow)
                                  for chip in sorted(gpu_aot.SPEC_FILES)])
def test_each_spec_compiles_a_small_step(chip):
  c = tiny_config()
  c.model.num_layers, c.model.d_model, c.model.n_ffn = 1, 64, 128
  result = aot.compile_train_step(c, f'{chip}:1')
  kind = gpu_aot.spec_text(chip).split('device_description_str: "')[1].split('"')[0]
  assert result['device_kind'] == kind and result['num_devices'] == 1
  assert result['hbm'] == gpu_aot.device_memory(chip) and result['budget'] == int(0.75 * result['hbm'])
  assert 0 < result['memory']['total'] < result['budget']
  aot.check_fits(result)


@pytest.mark.slow
@needs_plugin
def test_tiny_on_8_h100_fsdp():
  """An FSDP mesh over one node: parameters all-gathered, gradients reduce-scattered."""
  result = aot.compile_train_step(tiny_config(data=1, fsdp=-1), 'h100:8')
  assert result['num_devices'] == 8 and result['mesh_shape'] == {'data': 1, 'fsdp': 8, 'tensor': 1}
  assert result['collectives']['all-gather'] > 0 and result['collectives']['reduce-scatter'] > 0
  assert result['cudnn_attention_calls'] == 0 and result['memory']['cudnn_workspace'] == 0
  report = aot.format_report(result)
  assert 'h100:8 (NVIDIA H100 80GB HBM3, 8 devices)' in report
  assert "of 59.39 GiB (JAX's 75% of 79.19 GiB)" in report
  assert 'attention     xla (0 cuDNN fused-attention calls' in report
  aot.check_fits(result)


@pytest.mark.slow
@needs_plugin
def test_tiny_on_2_hosts_of_8():
  """2 hosts x 8 H100: the DCN axis runs between the hosts, the ICI axis over the GPUs of each."""
  c = tiny_config(data=1, fsdp=8, dcn_data=2)
  result = aot.compile_train_step(c, 'h100:2x8')
  assert result['num_devices'] == 16 and result['hosts'] == 2
  assert result['mesh_shape'] == {'data': 2, 'fsdp': 8, 'tensor': 1}
  assert sum(result['collectives'].values()) > 0
  assert '16 devices, 2 hosts' in aot.format_report(result)


@needs_plugin
def test_dcn_needs_that_many_hosts():
  with pytest.raises(UserError, match=r'DCN mesh sizes \[2, 1, 1\] need 2 hosts; the devices are on 1'):
    aot.compile_train_step(tiny_config(data=1, fsdp=4, dcn_data=2), 'h100:8')


@pytest.mark.slow
@needs_plugin
def test_over_memory_is_reported_with_what_to_change():
  """XLA:GPU compiles a step far over the device memory with a warning only: the check says no."""
  c = tiny_config()
  c.model.dtype = 'float32'
  c.train.batch_size, c.data.seq_len = 256, 4096
  result = aot.compile_train_step(c, 'h100:1')
  assert result['memory']['total'] > gpu_aot.device_memory('h100')
  with pytest.raises(UserError, match=r"does not fit: [\d.]+ GiB per device > 59.39 GiB \(JAX's 75% of "
                                      r'79.19 GiB\) of h100 .*to fit: raise train.grad_accum \(now 1: 256 '
                                      r'sequences per device per micro-batch\); model.remat=block'):
    aot.check_fits(result)


@pytest.mark.slow
@needs_cudnn
def test_tiny_on_8_h100_with_cudnn_attention():
  """bf16 on a GPU defaults to cuDNN's fused attention: its forward and backward custom calls lower."""
  c = tiny_config()
  c.model.attention_impl = ''
  result = aot.compile_train_step(c, 'h100:8')
  assert result['attention_impl'] == 'cudnn' and result['cudnn_attention_calls'] == 2
  # 2 sequences per device x 4 heads x 128 positions x (32 + 1) float32 per call
  assert result['memory']['cudnn_workspace'] == 2 * 4 * 128 * 33 * 4
  assert result['collectives']['all-reduce'] > 0        # the data-parallel gradient sum
  assert 'attention     cudnn (2 cuDNN fused-attention calls' in aot.format_report(result)


@needs_cudnn
def test_cudnn_head_dim_jax_refuses_without_a_device():
  """JAX checks cuDNN attention against a live device; without one it applies the pre-Hopper limits."""
  c = tiny_config()
  c.model.attention_impl, c.model.d_model, c.model.num_heads = 'cudnn', 512, 2    # head dim 256
  with pytest.raises(UserError, match=r'JAX refuses attention_impl=cudnn here: The head dim must be <= 128 '
                                      r'.*pre-Hopper limits.*--config.model.attention_impl=xla'):
    aot.compile_train_step(c, 'h100:1')


def run_cli(*args, env=None):
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', '--mode=compile',
                         f'--config={os.path.join(ROOT, "experiments", "tiny.py")}', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  return proc.returncode, proc.stdout, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''


@pytest.mark.slow
def test_cli_bad_gpu_topology():
  code, _, line = run_cli('--topology=h100:9x')
  assert code == 2 and line.startswith("error: unknown or malformed --topology='h100:9x': expected GPU:N"), line


@pytest.mark.slow
@needs_plugin
def test_cli_compile_for_h100():
  code, out, line = run_cli('--topology=h100:8', '--config.model.num_layers=1',
                            '--config.model.attention_impl=xla')
  assert code == 0, line
  assert 'h100:8 (NVIDIA H100 80GB HBM3, 8 devices)' in out and 'data 8 x fsdp 1 x tensor 1' in out
  assert 'cuDNN ws' in out and "JAX's 75% of 79.19 GiB" in out and 'all-reduce' in out

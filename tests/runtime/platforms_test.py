"""platforms.choose: a CPU machine starts JAX on the CPU alone (quietly, with libtpu installed); the
user's JAX_PLATFORMS, a TPU or a GPU leave the choice to JAX."""
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.helpers import FAST, ROOT, run_main
from tokenformer_jax.runtime import gpu_aot
from tokenformer_jax.runtime import platforms

_PROBE = 'from tokenformer_jax.runtime import platforms; print(platforms.choose()); import jax; print(jax.devices()[0].platform)'


def _probe(**env):
  base = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  return subprocess.run([sys.executable, '-c', _PROBE], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env={**base, **env})


@pytest.mark.skipif(platforms.tpu_attached() or platforms.gpu_visible(), reason='an accelerator is here')
def test_cpu_machine_gets_the_cpu_alone_and_starts_quietly():
  proc = _probe()
  assert proc.returncode == 0 and proc.stdout.split() == ['cpu', 'cpu'], proc.stderr
  assert 'TPU' not in proc.stderr and 'tpu' not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_the_users_choice_is_kept():
  proc = _probe(JAX_PLATFORMS='cpu')
  assert proc.returncode == 0 and proc.stdout.split() == ['None', 'cpu'], proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                    reason="libtpu is not installed (the test extra brings it on Linux x86-64)")
def test_a_training_run_prints_no_tpu_errors(tmp_path):
  code, _, err = run_main(*FAST, '--config.train.sample_tokens=0', workdir=tmp_path / 'w')
  assert code == 0, err
  assert 'TPU' not in err and 'libtpu' not in err and 'Unable to initialize backend' not in err, err[:2000]


@pytest.mark.slow
@pytest.mark.skipif(not gpu_aot.compiler_installed(),
                    reason="JAX's CUDA plugin is not installed (pip install -e '.[gpu-compile]')")
@pytest.mark.skipif(platforms.tpu_attached() or platforms.gpu_visible(), reason='an accelerator is here')
def test_the_cuda_plugin_on_a_machine_without_a_gpu_is_silent():
  """The gpu-compile extra (for --mode=compile) must change nothing else: no CUDA messages at `import
  jax` (the plugin's modules print three without the CUDA runtime) nor when JAX starts its backends."""
  bare = subprocess.run([sys.executable, '-c', 'import jax'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert bare.returncode == 0 and bare.stderr == '', bare.stderr
  proc = _probe()
  assert proc.returncode == 0 and proc.stdout.split() == ['cpu', 'cpu'], proc.stderr
  assert 'cuda' not in proc.stderr.lower() and 'plugin' not in proc.stderr.lower(), proc.stderr


def _pci(root, devices):
  for name, (vendor, pci_class) in devices.items():
    (root / name).mkdir(parents=True)
    (root / name / 'vendor').write_text(vendor + '\n')
    (root / name / 'class').write_text(pci_class + '\n')
  return str(root)


def test_a_tpu_is_found_on_the_pci_bus_and_a_cloud_vms_own_devices_are_not(tmp_path):
  vm = {'0000:00:04.0': ('0x1ae0', '0x020000'),     # gVNIC
        '0000:00:05.0': ('0x1ae0', '0x010802'),     # NVMe
        '0000:00:06.0': ('0x1af4', '0x018000')}     # virtio
  assert not platforms.tpu_attached(_pci(tmp_path / 'vm', vm))
  tpu = {**vm, '0000:00:07.0': ('0x1ae0', '0x120000')}
  assert platforms.tpu_attached(_pci(tmp_path / 'tpu', tpu))

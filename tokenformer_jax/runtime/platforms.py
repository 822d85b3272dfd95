"""Which JAX platforms a process initialises, chosen before JAX starts its backends.

With libtpu installed (the `test` and `tpu` extras bring it, for --mode=compile), JAX tries to start a
TPU backend on every machine, and on one without TPU chips libtpu prints half a dozen lines of errors
before JAX falls back to the CPU. So an entry point calls `choose()` first: where JAX_PLATFORMS is not
set, no TPU chip is attached and no GPU is visible, JAX is told to start the CPU backend only. A TPU VM
and a GPU machine are left to JAX's own choice, and so is any JAX_PLATFORMS the user set.
--mode=compile is not affected: it loads libtpu as a compiler for a topology, not as a backend.

TPU chips are found on the PCI bus (sysfs), as JAX itself finds them before it starts libtpu; where in
doubt, the choice is left to JAX.
"""
import glob
import os

_GPU_DEVICES = ('/dev/nvidiactl', '/dev/kfd')   # NVIDIA, AMD
_PCI_DEVICES = '/sys/bus/pci/devices'
_GOOGLE_PCI_VENDOR = '0x1ae0'
_NOT_TPU_CLASSES = ('0x01', '0x02')             # PCI base classes: storage (a Cloud VM's NVMe), network


def tpu_attached(pci_root: str = _PCI_DEVICES) -> bool:
  """Whether a TPU may be on this machine's PCI bus: any Google device there that is not a disk or a
  network controller (a Cloud VM's own NVMe and gVNIC are Google's). JAX has no public way to ask before a backend starts, and
  jax.devices() would start libtpu, the very thing to avoid. Erring towards "attached" only leaves the
  choice to JAX; a list of TPU device ids would miss the next TPU generation and force it onto the CPU."""
  for device in glob.glob(os.path.join(pci_root, '*')):
    vendor, pci_class = _read(device, 'vendor'), _read(device, 'class')
    if vendor == _GOOGLE_PCI_VENDOR and not pci_class.startswith(_NOT_TPU_CLASSES):
      return True
  return False


def _read(device: str, name: str) -> str:
  try:
    with open(os.path.join(device, name)) as f:
      return f.read().strip().lower()
  except OSError:
    return ''


def gpu_visible() -> bool:
  return any(os.path.exists(path) for path in _GPU_DEVICES)


def choose() -> str | None:
  """Restricts JAX to the CPU where nothing else could run; returns what it set (None: nothing).

  Must run before the first JAX computation (backends start then, not at import)."""
  if os.environ.get('JAX_PLATFORMS') is not None or tpu_attached() or gpu_visible():
    return None
  import jax  # pylint: disable=import-outside-toplevel
  if jax.config.jax_platforms:          # set in code before us
    return None
  jax.config.update('jax_platforms', 'cpu')
  return 'cpu'

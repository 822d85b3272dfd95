"""Which JAX platforms a process initialises, chosen before JAX starts its backends.

With libtpu installed (the `test` and `tpu` extras bring it, for --mode=compile), JAX tries to start a
TPU backend on every machine, and on one without TPU chips libtpu prints half a dozen lines of errors
before JAX falls back to the CPU. So an entry point calls `choose()` first: where JAX_PLATFORMS is not
set, no TPU chip is attached and no GPU is visible, JAX is told to start the CPU backend only. A TPU VM
and a GPU machine are left to JAX's own choice, and so is any JAX_PLATFORMS the user set.
--mode=compile is not affected: it loads libtpu as a compiler for a topology, not as a backend.

TPU chips are counted the way JAX itself counts them before it starts libtpu (its PCI scan of the
TPU device ids); where that check cannot be reached, the choice is left to JAX.
"""
import os

_GPU_DEVICES = ('/dev/nvidiactl', '/dev/kfd')   # NVIDIA, AMD


def tpu_attached() -> bool:
  """Whether TPU chips are on this machine's PCI bus. JAX has no public way to ask before a backend
  starts (jax.devices() would start libtpu, the very thing to avoid), and libtpu none that is quiet; so
  this asks JAX's private PCI scan, whose list of TPU device ids grows with each TPU generation."""
  try:
    from jax._src import hardware_utils  # pylint: disable=import-outside-toplevel
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
  except (ImportError, AttributeError):   # another JAX: cannot tell, so assume there may be one
    return True


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

"""Which host memory allocator the process runs with, chosen before JAX starts.

Why this matters on CPU: XLA allocates each step's temporary buffer (all activations; 1.3 GiB for the
27M-parameter benchmark config) afresh on every execution and frees it afterwards. glibc serves a request
that large with a new mmap and returns it with munmap, so every step first-touches the whole buffer again:
360,000 page faults per step, each zeroing a 4 KiB page, ≈ 15% of the step. The remedies, all set up
before the process starts (they are environment variables, read by the dynamic loader and by glibc):

  tcmalloc   LD_PRELOAD a tcmalloc library (Debian/Ubuntu: libtcmalloc-minimal4). It keeps freed memory
             for reuse: no page faults after the first steps, at the cost of keeping the peak resident.
  cache      LD_PRELOAD our large-block cache (large_block_cache.c, built by `pip install -e .` where a
             C compiler is present): glibc for everything, except that a freed block of 16 MiB or more
             is kept and handed to the next request of the same size (the next step's buffer). The same
             effect as tcmalloc for this purpose, with nothing to install beyond the package.
  hugepages  glibc's glibc.malloc.hugetlb=1 tunable: large blocks get transparent huge pages, 512× fewer
             faults. The memory is still returned to the kernel and zeroed again each step, so it recovers
             at best about half as much as tcmalloc, and it depends on the kernel finding contiguous
             memory: on a fragmented host it measured slower than plain glibc (README). Needs nothing
             installed (glibc ≥ 2.35).

`reexec()` applies the choice of $TOKENFORMER_HOST_ALLOCATOR (auto: tcmalloc when installed, else the
cache when built, else hugepages, and nothing on a GPU or TPU machine; or tcmalloc, cache, hugepages,
system) by re-executing the same command line once with the variables set; the entry points call it
first thing. `describe()` says what is in
effect, for logs and benchmarks.
"""
import ctypes.util
import glob
import importlib.util
import os
import sys

ENV = 'TOKENFORMER_HOST_ALLOCATOR'
CHOICES = ('auto', 'tcmalloc', 'cache', 'hugepages', 'system')
_DONE = 'TOKENFORMER_HOST_ALLOCATOR_SET'     # marks the re-executed process, so it happens only once
_HUGEPAGES = 'glibc.malloc.hugetlb=1'


def find_tcmalloc() -> str | None:
  """The tcmalloc library's name as the dynamic loader finds it, or None when none is installed."""
  for name in ('tcmalloc_minimal', 'tcmalloc'):
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def find_block_cache() -> str | None:
  """The path of the large-block cache library built with the package, or None where it was not built
  (or where its path could not be preloaded: LD_PRELOAD splits at spaces and colons)."""
  spec = importlib.util.find_spec('tokenformer_jax._large_block_cache')
  path = spec.origin if spec is not None else None
  return path if path and not any(c in path for c in ' :\t') else None


def accelerator_present(env: dict) -> bool:
  """Whether JAX will compute on a GPU or TPU here: one is attached and JAX_PLATFORMS does not put the
  CPU first. There the step's buffers live on the device, and auto leaves the host allocator alone."""
  if env.get('JAX_PLATFORMS', '').split(',')[0].strip() == 'cpu':
    return False
  return (os.path.exists('/dev/nvidiactl') or bool(glob.glob('/dev/accel[0-9]*'))
          or bool(glob.glob('/dev/vfio/[0-9]*')))


def planned_env(env: dict, tcmalloc: str | None, block_cache: str | None = None,
                accelerator: bool = False) -> dict:
  """The variables to add to `env` for the allocator it asks for; {} when nothing is to change.

  Raises ValueError for an unknown choice, or for a library that is not there.
  """
  choice = env.get(ENV, 'auto') or 'auto'
  if choice not in CHOICES:
    raise ValueError(f'{ENV}={choice!r}: choose one of {", ".join(CHOICES)}')
  if choice == 'system' or env.get(_DONE) or not sys.platform.startswith('linux'):
    return {}
  if choice == 'auto' and accelerator:
    return {}
  if choice == 'tcmalloc' and tcmalloc is None:
    raise ValueError(f'{ENV}=tcmalloc but no tcmalloc library is installed '
                     '(apt install libtcmalloc-minimal4)')
  if choice == 'cache' and block_cache is None:
    raise ValueError(f'{ENV}=cache but the large-block cache was not built (it needs a C compiler '
                     'when the package is installed: pip install -e .)')
  for name, library in (('tcmalloc', tcmalloc), ('cache', block_cache)):
    if choice in ('auto', name) and library is not None:
      if library in env.get('LD_PRELOAD', ''):
        return {}
      preload = ' '.join(p for p in (library, env.get('LD_PRELOAD', '')) if p)
      return {'LD_PRELOAD': preload, _DONE: name}
  tunables = env.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables:
    return {}
  return {'GLIBC_TUNABLES': ':'.join(t for t in (tunables, _HUGEPAGES) if t), _DONE: 'hugepages'}


def reexec() -> None:
  """Re-executes this command line once with the allocator variables set; returns if none are needed.

  Call it before JAX is imported (threads and allocations made before it would be lost anyway). An
  invalid $TOKENFORMER_HOST_ALLOCATOR ends the process with a one-line error and exit status 2.
  """
  try:
    env = dict(os.environ)
    changes = planned_env(env, find_tcmalloc(), find_block_cache(), accelerator_present(env))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if not changes:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], {**os.environ, **changes})


def describe() -> str:
  """What serves host allocations in this process, in a few words (from the loaded libraries)."""
  try:
    with open('/proc/self/maps', encoding='utf-8') as f:
      maps = f.read()
  except OSError:
    return 'system'
  if 'libtcmalloc' in maps:
    return 'tcmalloc'
  if 'jemalloc' in maps:
    return 'jemalloc'
  if '_large_block_cache' in maps:
    return 'glibc + large-block cache'
  if 'glibc.malloc.hugetlb=1' in os.environ.get('GLIBC_TUNABLES', ''):
    return 'glibc + transparent huge pages'
  return 'glibc'

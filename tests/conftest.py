"""pytest's hooks and fixtures for the whole suite; the helpers the tests import are in tests/helpers.py."""
import importlib.util
import os
import shutil
import tempfile

import pytest

# One XLA compilation cache for the session, shared by the test processes (pytest-xdist workers inherit
# the environment) and every process they start: the same small models are built in ~100 processes, and
# each would otherwise compile them again. Set here, before JAX is imported; a cache the caller names is
# kept as it is. A size limit makes JAX lock the cache (filelock) around each read and write: without one
# it writes entries in place, and a process reading one that another is writing would get half of it.
_CACHE_CREATED = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ and importlib.util.find_spec('filelock'):
  _CACHE_CREATED = tempfile.mkdtemp(prefix='tokenformer_jax_tests_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_CREATED
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(8 << 30))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

from tokenformer_jax.runtime import platforms  # pylint: disable=wrong-import-position

platforms.choose()   # as main.py does: the test process itself starts JAX on the CPU only


def pytest_unconfigure(config):
  """The process that made the compilation cache removes it."""
  del config
  if _CACHE_CREATED:
    shutil.rmtree(_CACHE_CREATED, ignore_errors=True)


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory):
  """One tokenizer + token file for the whole session (vocab 512 on the KJV text)."""
  return str(tmp_path_factory.mktemp('data_cache'))

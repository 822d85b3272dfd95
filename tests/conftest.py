"""pytest's hooks and fixtures for the whole suite; the helpers the tests import are in tests/helpers.py."""
import pytest

from tokenformer_jax.runtime import platforms

platforms.choose()   # as main.py does: the test process itself starts JAX on the CPU only


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory):
  """One tokenizer + token file for the whole session (vocab 512 on the KJV text)."""
  return str(tmp_path_factory.mktemp('data_cache'))

"""host_memory: the allocator plan for each choice, and one real re-execution with the variables set."""
import os
import subprocess
import sys

import pytest

from tokenformer_jax import host_memory

TC = 'libtcmalloc_minimal.so.4'
CACHE = '/site/tokenformer_jax/_large_block_cache.so'
needs_cache = pytest.mark.skipif(host_memory.find_block_cache() is None,
                                 reason='the large-block cache was not built (no C compiler at install)')


def test_auto_prefers_tcmalloc_and_keeps_an_existing_preload():
  assert host_memory.planned_env({}, TC) == {'LD_PRELOAD': TC, host_memory._DONE: 'tcmalloc'}
  planned = host_memory.planned_env({'LD_PRELOAD': 'libfoo.so'}, TC)
  assert planned['LD_PRELOAD'] == f'{TC} libfoo.so'
  assert host_memory.planned_env({'LD_PRELOAD': f'/usr/lib/{TC}'}, TC) == {}


def test_auto_without_tcmalloc_uses_huge_pages_and_keeps_other_tunables():
  assert host_memory.planned_env({}, None) == {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1',
                                               host_memory._DONE: 'hugepages'}
  planned = host_memory.planned_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, None)
  assert planned['GLIBC_TUNABLES'] == 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  assert host_memory.planned_env({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, None) == {}


def test_auto_takes_the_block_cache_when_tcmalloc_is_missing():
  assert host_memory.planned_env({}, TC, CACHE)[host_memory._DONE] == 'tcmalloc'
  assert host_memory.planned_env({}, None, CACHE) == {'LD_PRELOAD': CACHE, host_memory._DONE: 'cache'}
  assert host_memory.planned_env({host_memory.ENV: 'cache'}, TC, CACHE)['LD_PRELOAD'] == CACHE
  assert host_memory.planned_env({host_memory.ENV: 'hugepages'}, TC, CACHE)[host_memory._DONE] == 'hugepages'
  with pytest.raises(ValueError, match='large-block cache was not built'):
    host_memory.planned_env({host_memory.ENV: 'cache'}, TC, None)


def test_auto_leaves_an_accelerator_machine_alone_unless_asked():
  assert host_memory.planned_env({}, TC, CACHE, accelerator=True) == {}
  assert host_memory.planned_env({host_memory.ENV: 'cache'}, TC, CACHE, accelerator=True)['LD_PRELOAD'] == CACHE
  assert not host_memory.accelerator_present({'JAX_PLATFORMS': 'cpu'})


def test_explicit_choices_and_the_once_only_marker():
  assert host_memory.planned_env({host_memory.ENV: 'system'}, TC) == {}
  assert 'GLIBC_TUNABLES' in host_memory.planned_env({host_memory.ENV: 'hugepages'}, TC)
  assert host_memory.planned_env({host_memory._DONE: 'tcmalloc'}, TC) == {}
  with pytest.raises(ValueError, match='no tcmalloc library is installed'):
    host_memory.planned_env({host_memory.ENV: 'tcmalloc'}, None)
  with pytest.raises(ValueError, match='choose one of'):
    host_memory.planned_env({host_memory.ENV: 'jemalloc'}, TC)


_SCRIPT = ('import os, sys; from tokenformer_jax import host_memory; host_memory.reexec(); '
           'print(os.environ.get("TOKENFORMER_HOST_ALLOCATOR_SET"), host_memory.describe(), sys.argv[1:])')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc and LD_PRELOAD are Linux')
def test_reexec_runs_the_same_command_once_with_the_allocator_in_effect():
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES')}
  env[host_memory.ENV] = 'hugepages'
  out = subprocess.run([sys.executable, '-c', _SCRIPT, 'a', '--b=1'], env=env, capture_output=True,
                       text=True, check=True).stdout.split('\n')
  assert out[0] == "hugepages glibc + transparent huge pages ['a', '--b=1']"
  if host_memory.find_tcmalloc():
    env[host_memory.ENV] = 'auto'
    out = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith('tcmalloc tcmalloc')
  env[host_memory.ENV] = 'bogus'
  bad = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.strip().startswith('error: TOKENFORMER_HOST_ALLOCATOR=')
  env[host_memory.ENV] = 'system'
  out = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.startswith('None glibc')


_CACHE_PROBE = """
import ctypes, sys
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.realloc.restype = ctypes.c_void_p
MiB = 1 << 20
def alloc(size, align=64):
  p = ctypes.c_void_p()
  assert libc.posix_memalign(ctypes.byref(p), align, size) == 0
  assert p.value % align == 0
  ctypes.memset(p.value, 1, size)
  return p.value
a = alloc(32 * MiB); libc.free(a)
print(alloc(32 * MiB) == a)                 # the same size comes back as the same block
print(alloc(32 * MiB + 4096) == a)          # a block in use is not handed out twice
b = alloc(32 * MiB); c = alloc(32 * MiB); libc.free(b); libc.free(c)
print(alloc(32 * MiB) == c)                 # over the 40 MiB budget the oldest kept one (b) was freed
d = alloc(48 * MiB); e = libc.realloc(d, 64 * MiB); libc.free(e)   # realloc untracks; must not crash
small = alloc(1 * MiB); libc.free(small)
print('ok')
"""


@needs_cache
def test_block_cache_reuses_same_size_blocks_within_its_budget():
  env = dict(os.environ, LD_PRELOAD=host_memory.find_block_cache(), TOKENFORMER_BLOCK_CACHE_MIB='40')
  out = subprocess.run([sys.executable, '-c', _CACHE_PROBE], env=env, capture_output=True, text=True,
                       check=True).stdout.split()
  assert out == ['True', 'False', 'True', 'ok']


@needs_cache
def test_block_cache_stops_a_double_free_like_glibc_does():
  probe = _CACHE_PROBE.split('a = alloc(32 * MiB)')[0] + 'a = alloc(32 * MiB); libc.free(a); libc.free(a)'
  env = dict(os.environ, LD_PRELOAD=host_memory.find_block_cache())
  proc = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True)
  assert proc.returncode == -6 and 'double free detected' in proc.stderr


_FAULTS = """
import resource, sys
from tokenformer_jax import host_memory
host_memory.reexec()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.tanh(jnp.outer(x, x)) @ x))   # a 64 MiB temporary per call
x = jnp.linspace(0.0, 1.0, 4096)
outs = [float(f(x)) for _ in range(5)]   # a call may allocate before the last one freed: a second block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
outs += [float(f(x)) for _ in range(10)]
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10, outs[-1], host_memory.describe())
"""


@needs_cache
def test_block_cache_stops_the_per_call_page_faults_and_changes_no_result():
  runs = {}
  for choice in ('system', 'cache'):
    env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'GLIBC_TUNABLES')}
    env[host_memory.ENV] = choice
    faults, value, *allocator = subprocess.run(
        [sys.executable, '-c', _FAULTS], env=env, capture_output=True, text=True, check=True).stdout.split()
    runs[choice] = (int(faults), value, ' '.join(allocator))
  assert runs['cache'][2] == 'glibc + large-block cache' and runs['system'][2] == 'glibc'
  assert runs['cache'][1] == runs['system'][1]
  # glibc maps the 64 MiB afresh each call (16,384 pages); the cache hands back resident pages. Once in a
  # while a call allocates before the previous one's buffer is freed: one miss, after which two are kept.
  assert runs['system'][0] > 10_000 and runs['cache'][0] * 4 < runs['system'][0], runs

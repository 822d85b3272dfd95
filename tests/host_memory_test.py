"""host_memory: the allocator plan for each choice, and one real re-execution with the variables set."""
import os
import subprocess
import sys

import pytest

from tokenformer_jax import host_memory

TC = 'libtcmalloc_minimal.so.4'


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

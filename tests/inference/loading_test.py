"""Restoring a checkpoint for inference: parameters only, onto any mesh, frozen τ of grown models adopted."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.helpers import ROOT, small_config
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import generate
from tokenformer_jax.inference import loading
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib

VOCAB = 512
PROMPTS = [[5, 6, 7, 8, 9], [1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]

# Saves a full train state sharded over (fsdp 2, tensor 2), restores its parameters onto another 4-device
# mesh (data 2, tensor 2) and generates there with sharded parameters.
WORKER = f'''
import json, sys
from tests.helpers import small_config
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.inference import generate
from tokenformer_jax.inference import loading
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib
c = small_config()
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 2
spec = state_lib.make_spec(c, {VOCAB}, sharding.make_mesh(c.mesh))
store.save(store.manager(sys.argv[1]), 7, state_lib.init_state(spec, c), None,
                run_record.run_meta(c, {VOCAB}))
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 1, 2
restored = loading.load(c, sys.argv[1])
shards = {{str(s.data.shape) for s in restored.params['blocks']['mlp']['key_tokens'].addressable_shards}}
generator = generate.Generator(restored.graphdef, context=64, vocab_limit=500, eos_id=None,
                               sampling=generate.GREEDY)
print(json.dumps({{'tokens': generator.generate(restored.params, {PROMPTS}, 12, seed=0),
                  'shards': sorted(shards)}}))
'''


def _generate(restored):
  generator = generate.Generator(restored.graphdef, context=64, vocab_limit=500, eos_id=None,
                                 sampling=generate.GREEDY)
  return generator.generate(restored.params, PROMPTS, 12, seed=0)


@pytest.mark.slow
def test_checkpoint_of_another_mesh_gives_the_same_parameters_and_tokens(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', WORKER, str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  worker = json.loads(proc.stdout.strip().splitlines()[-1])
  assert worker['shards'] == ['(2, 128, 64)']  # the 256 FFN tokens split over tensor=2
  c = small_config()
  restored = loading.load(c, str(tmp_path))  # this process: one device
  assert restored.step == 7
  fresh = state_lib.init_state(state_lib.make_spec(c, VOCAB, sharding.make_mesh(c.mesh)), c)['params']
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(fresh)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _generate(restored) == worker['tokens']


@pytest.fixture()
def saved(tmp_path):
  """A checkpoint of a model whose τ is frozen (as growth leaves it)."""
  c = small_config()
  c.model.n_ref_qkv, c.model.n_ref_proj, c.model.n_ref_ffn = 48, 40, 200
  spec = state_lib.make_spec(c, VOCAB, sharding.make_mesh(c.mesh))
  store.save(store.manager(str(tmp_path)), 3, state_lib.init_state(spec, c), None,
                  run_record.run_meta(c, VOCAB))
  return str(tmp_path)


def test_frozen_tau_is_taken_from_the_checkpoint(saved):
  c = small_config()  # n_ref_* left at 0
  restored = loading.load(c, saved)
  m = restored.spec.model_cfg
  assert (m.n_ref_qkv, m.n_ref_proj, m.n_ref_ffn) == (48, 40, 200)
  assert c.model.n_ref_ffn == 0           # adopted into a copy: the caller's config is left as it was
  assert restored.vocab_size == VOCAB and restored.step == 3


def test_refusals(saved, tmp_path):
  c = small_config()
  c.model.n_ffn = 128
  with pytest.raises(UserError, match='different model config.*model.n_ffn: checkpoint 256, config 128'):
    loading.load(c, saved)
  with pytest.raises(UserError, match='no checkpoint in'):
    loading.load(small_config(), str(tmp_path / 'empty'))
  with pytest.raises(UserError, match='no such checkpoint'):
    loading.load(small_config(), saved, step=99)

  class Big:
    vocab_size = VOCAB + 1
  with pytest.raises(UserError, match='513 ids but the model only 512 embedding rows'):
    restored = loading.load(small_config(), saved)
    run_record.inference_tokenizer(restored.meta, Big(), restored.vocab_size, restored.step)

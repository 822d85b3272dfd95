"""Strict restore: any difference of paths or shapes is refused before a byte is read; array bytes
damaged on disk are refused after reading, by their digests; only a damaged checkpoint is called one."""
import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import ROOT, damage_array_bytes, small_config
from tokenformer_jax.checkpoints import digests
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.data import pipeline
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib


def _iterator(skip: int = 0):
  it = pipeline.Position()
  it.set_state({'global_batches': skip})
  return it


def _spec(**model):
  c = small_config()
  for key, value in model.items():
    c.model[key] = value
  return c, state_lib.make_spec(c, 128, sharding.make_mesh(c.mesh))


@pytest.fixture()
def saved(tmp_path):
  c, spec = _spec()
  state = state_lib.init_state(spec, c)
  mngr = store.manager(str(tmp_path))
  store.save(mngr, 5, state, _iterator(skip=7), run_record.run_meta(c, 128))
  return mngr, state


def test_roundtrip_restores_state_and_iterator(saved):
  mngr, state = saved
  c, spec = _spec()
  it = _iterator()
  restored = store.restore(mngr, 5, state_lib.abstract_targets(spec), it)
  assert it.state() == {'global_batches': 7}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('change,needle', [
    ({'num_layers': 3}, 'params/blocks/key/key_tokens: checkpoint (2, 64, 64), model (3, 64, 64)'),
    ({'n_ffn': 128}, 'params/blocks/mlp/key_tokens: checkpoint (2, 256, 64), model (2, 128, 64)'),
    ({'d_model': 32}, 'params/blocks/key/key_tokens: checkpoint (2, 64, 64), model (2, 64, 32)'),
    ({'kind': 'dense'}, 'params/blocks/key/key_tokens in the checkpoint'),
])
def test_mismatch_is_refused(saved, change, needle):
  mngr, _ = saved
  _, spec = _spec(**change)
  with pytest.raises(UserError, match='does not match the model') as err:
    store.restore(mngr, 5, state_lib.abstract_targets(spec))
  assert needle in str(err.value)


def test_config_difference_named(saved):
  mngr, _ = saved
  c, _ = _spec(n_qkv=96)
  with pytest.raises(UserError, match=r'model.n_qkv: checkpoint 64, config 96'):
    run_record.check_model(store.read_meta(mngr, 5), c, 5)


def test_every_function_key_is_compared_and_runtime_keys_are_not(saved):
  mngr, _ = saved
  meta = store.read_meta(mngr, 5)
  for key, value in (('rotary_pct', 0.5), ('rotary_base', 500.0), ('ln_eps', 1e-6), ('mlp_dim', 7)):
    c, _ = _spec(**{key: value})
    with pytest.raises(UserError, match=f'model.{key}: checkpoint'):
      run_record.check_model(meta, c, 5)
  # how the function is computed (or how fresh parameters were drawn) may change on resume
  c, _ = _spec(dtype='bfloat16', remat='block', scan_unroll=1, attention_impl='xla', gelu_impl='erfc',
               key_init_std=0.5)
  run_record.check_model(meta, c, 5)


def test_a_key_the_checkpoint_predates_counts_as_its_default(saved):
  mngr, _ = saved
  meta = store.read_meta(mngr, 5)
  del meta['config']['model']['rotary_pct']      # written before the key existed
  run_record.check_model(meta, _spec()[0], 5)
  with pytest.raises(UserError, match='model.rotary_pct: checkpoint 0.25, config 0.5'):
    run_record.check_model(meta, _spec(rotary_pct=0.5)[0], 5)


def test_adopting_frozen_tau_is_explicit_and_leaves_the_config_alone(saved):
  mngr, _ = saved
  meta = store.read_meta(mngr, 5)
  meta['config']['model']['n_ref_ffn'] = 200
  c, _ = _spec()
  with pytest.raises(UserError, match='model.n_ref_ffn: checkpoint 200, config 0'):
    run_record.check_model(meta, c, 5)       # check_model itself changes nothing
  adopted = run_record.adopt_frozen_tau(c, meta)
  run_record.check_model(meta, adopted, 5)
  assert adopted.model.n_ref_ffn == 200 and c.model.n_ref_ffn == 0


def test_vocab_size_is_compared_by_what_it_resolves_to(saved):
  mngr, _ = saved
  meta = store.read_meta(mngr, 5)     # model.vocab_size 0 resolved to 128; no tokenizer size on record
  for explicit in (128, 100):              # 100 is padded to 128 too
    run_record.check_model(meta, _spec(vocab_size=explicit)[0], 5)
  with pytest.raises(UserError, match=r'model.vocab_size: checkpoint 0, config 256 \(padded vocab: '
                                      r'checkpoint 128, config 256\)'):
    run_record.check_model(meta, _spec(vocab_size=256)[0], 5)
  meta['config']['model']['vocab_size'], meta['vocab_size'] = 256, 256
  run_record.check_model(meta, _spec(vocab_size=256)[0], 5)
  with pytest.raises(UserError, match='model.vocab_size: checkpoint 256, config 0$'):
    run_record.check_model(meta, _spec()[0], 5)     # what 0 meant for its tokenizer is not on record
  meta['tokenizer_vocab_size'] = 200                 # it is: 0 means 200, padded to 256
  run_record.check_model(meta, _spec()[0], 5)
  meta['tokenizer_vocab_size'] = 120                 # 0 means 128 now
  with pytest.raises(UserError, match=r'checkpoint 256, config 0 \(padded vocab: checkpoint 256, '
                                      r'config 128\)'):
    run_record.check_model(meta, _spec()[0], 5)


@pytest.mark.slow
def test_a_run_trained_with_vocab_0_resumes_and_evaluates_with_the_size_it_resolved_to(data_cache,
                                                                                       tmp_path):
  from tests.helpers import train_small
  from tokenformer_jax.inference import loading
  from tokenformer_jax.training import loop
  c, workdir = train_small(tmp_path / 'w', data_cache, steps=2, checkpoint_every=2)
  meta = store.read_meta(store.manager(workdir), 2)
  assert c.model.vocab_size == 0 and meta['vocab_size'] == 512 and meta['tokenizer_vocab_size'] <= 512
  other = c.copy_and_resolve_references()
  other.model.vocab_size = 1024
  for refused in (lambda: loading.load(other, workdir), lambda: loop.train(other, workdir)):
    with pytest.raises(UserError, match=r'of a different model config.*model.vocab_size: checkpoint 0, '
                                        r'config 1024'):
      refused()
  explicit = c.copy_and_resolve_references()
  explicit.model.vocab_size = 512
  assert loading.load(explicit, workdir).vocab_size == 512
  explicit.train.steps = 3
  assert loop.train(explicit, workdir).step == 3
  assert loading.load(c, workdir).step == 3      # and back: 0 is what 512 was


def test_one_restore_reads_the_parameters_alone(saved):
  mngr, state = saved
  _, spec = _spec()
  params = store.restore(mngr, 5, {'params': state_lib.abstract_targets(spec)['params']})
  assert set(params) == {'params'}
  for a, b in zip(jax.tree.leaves(state['params']), jax.tree.leaves(params['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_params_only_checkpoint_is_not_resumed(tmp_path):
  c, spec = _spec()
  mngr = store.manager(str(tmp_path))
  state = state_lib.init_state(spec, c)
  store.save(mngr, 0, {'params': state['params']}, None, run_record.run_meta(c, 128))
  with pytest.raises(UserError, match='holds parameters only'):
    store.restore(mngr, 0, state_lib.abstract_targets(spec))
  store.restore(mngr, 0, {'params': state_lib.abstract_targets(spec)['params']})


def test_damaged_array_bytes_are_the_corrupt_checkpoint_error(tmp_path):
  # uncompressed, as training saves: zstd frames would fail to decode, raw chunks read back as numbers
  c, spec = _spec()
  mngr = store.manager(str(tmp_path), compress=False)
  state = state_lib.init_state(spec, c)
  store.save(mngr, 5, state, _iterator(), run_record.run_meta(c, 128))
  damage_array_bytes(os.path.join(str(mngr.directory), '5'))
  with pytest.raises(UserError) as err:
    store.restore(mngr, 5, state_lib.abstract_targets(spec))
  message = str(err.value)
  assert f'checkpoint {mngr.directory}/5 is corrupt or truncated (DamagedArrays: ' in message, message
  assert message.endswith('the digest written at save differs for 1 array: params/embedding); no older '
                          'checkpoint to fall back on'), message
  with pytest.raises(UserError, match='differs for 1 array: params/embedding'):   # the parameters alone
    store.restore(mngr, 5, {'params': state_lib.abstract_targets(spec)['params']})


def test_a_checkpoint_saved_before_digests_were_kept_still_restores(tmp_path):
  """Saved as store.save did before digests: items state, data and meta only."""
  c, spec = _spec()
  state = state_lib.init_state(spec, c)
  old = ocp.CheckpointManager(str(tmp_path / 'checkpoints'),
                              item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                                             'data': ocp.JsonCheckpointHandler(),
                                             'meta': ocp.JsonCheckpointHandler()})
  old.save(3, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                      data=ocp.args.JsonSave({'global_batches': 2}),
                                      meta=ocp.args.JsonSave(run_record.run_meta(c, 128))))
  old.wait_until_finished()
  it = _iterator()
  restored = store.restore(store.manager(str(tmp_path)), 3, state_lib.abstract_targets(spec), it)
  assert it.state() == {'global_batches': 2}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_digest_sees_one_changed_bit_a_swap_and_the_saved_extent_only():
  x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  base = digests.compute({'x': x})['x']
  flipped = x.copy()
  flipped.view(np.uint32)[1, 2, 3] ^= 1 << 31   # the sign bit of one element
  swapped = x.copy()
  swapped[0, 0, 0], swapped[1, 2, 3] = x[1, 2, 3], x[0, 0, 0]
  assert digests.compute({'x': flipped})['x'] != base
  assert digests.compute({'x': swapped})['x'] != base
  grown = np.concatenate([x, np.zeros((2, 3, 2), np.float32)], axis=2)
  assert digests.compute({'x': grown}, {'x': (2, 3, 4)})['x'] == base
  assert digests.compute({'x': grown})['x'] != base


_SHARDED = """
import json, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tokenformer_jax.checkpoints import digests
x = np.random.default_rng(0).standard_normal((37, 16, 24)).astype(np.float32)
mesh = jax.make_mesh((2, 2), ('a', 'b'))
out = [digests.compute({'x': jax.device_put(x, NamedSharding(mesh, spec))})['x']
       for spec in (P(), P(None, 'a'), P(None, 'a', 'b'), P(None, ('a', 'b')))]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_digest_is_the_same_under_any_sharding():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', _SHARDED], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  sharded = json.loads(proc.stdout.strip().splitlines()[-1])
  x = np.random.default_rng(0).standard_normal((37, 16, 24)).astype(np.float32)
  assert sharded == [digests.compute({'x': x})['x']] * 4


@pytest.mark.parametrize('async_save', [True, False])
def test_a_full_disk_is_one_error_naming_the_checkpoint_and_its_size(tmp_path, monkeypatch, async_save):
  """The disk fills while the data item is written (a seam in Orbax's JSON writer): async, the error
  surfaces at the next wait; sync, in the save. Either way it names the step being written."""
  c, spec = _spec()
  state = state_lib.init_state(spec, c)
  mngr = store.manager(str(tmp_path), async_save=async_save)
  store.save(mngr, 1, state, _iterator(skip=1), run_record.run_meta(c, 128))

  async def disk_full(self, item, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / 'metadata'))
  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', disk_full)
  with pytest.raises(UserError) as err:
    store.save(mngr, 2, state, _iterator(skip=2), run_record.run_meta(c, 128), wait=False)
    mngr.wait_until_finished()
  n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  assert str(err.value).startswith(f'No space left on device while writing checkpoint {mngr.directory}/2: '
                                   f'it needs about {n_bytes / 2**20:.1f} MiB ({n_bytes} bytes, ')
  assert 'the newest complete checkpoint, step 1, is intact' in str(err.value)
  mngr.wait_until_finished()   # reported once
  monkeypatch.undo()
  it = _iterator()
  restored = store.restore(store.manager(str(tmp_path)), 1, state_lib.abstract_targets(spec), it)
  assert it.state() == {'global_batches': 1}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _files(folder):
  return sorted((os.path.join(root, name) for root, _, names in os.walk(folder) for name in names),
                key=os.path.getsize)


def _truncate(path, size=100):
  with open(path, 'r+b') as f:
    f.truncate(size)


@pytest.mark.parametrize('damage,read,detail', [
    (lambda step: _truncate(_files(os.path.join(step, 'state'))[-1]), 'restore',
     '(ValueError: OUT_OF_RANGE: Error reading'),
    (lambda step: os.remove(os.path.join(step, 'state', '_METADATA')), 'restore',
     '(FileNotFoundError: no array metadata in'),
    (lambda step: shutil.rmtree(os.path.join(step, 'data')), 'restore', '(FileNotFoundError: no data in'),
    (lambda step: _truncate(os.path.join(step, 'meta', 'metadata'), 5), 'meta', '(JSONDecodeError: '),
    (lambda step: os.remove(os.path.join(step, 'meta', 'metadata')), 'meta', '(FileNotFoundError: '),
], ids=['truncated_array', 'missing_array_metadata', 'missing_item', 'bad_json', 'missing_json'])
def test_a_damaged_checkpoint_is_named_with_what_is_damaged(saved, damage, read, detail):
  mngr, _ = saved
  _, spec = _spec()
  damage(os.path.join(str(mngr.directory), '5'))
  with pytest.raises(UserError) as err:
    if read == 'meta':
      store.read_meta(mngr, 5)
    else:
      store.restore(mngr, 5, state_lib.abstract_targets(spec), _iterator())
  assert f'checkpoint {mngr.directory}/5 is corrupt or truncated {detail}' in str(err.value), err.value


@pytest.mark.parametrize('error', [
    RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.'),
    ValueError('One of device_put args was given the sharding of NamedSharding(mesh=..., spec=P(\'data\',)), '
               'which implies that the global size of its dimension 0 should be divisible by 2, but it is '
               'equal to 3'),
    KeyboardInterrupt(),
])
@pytest.mark.parametrize('wrapped', [False, True], ids=['raw', 'as_orbax_wraps_a_read_error'])
def test_a_failure_that_is_not_damage_is_not_called_damage(saved, monkeypatch, error, wrapped):
  """An out-of-memory, a sharding the devices cannot take or an interrupt while reading propagates as
  itself, not as a corrupt checkpoint with the advice to fall back on an older one."""
  mngr, _ = saved
  _, spec = _spec()

  def failing_restore(*args, **kwargs):
    if wrapped and isinstance(error, Exception):
      raise Exception('Encountered error while reading array index: (slice(0, 2, 1),). See full '
                      'TensorStore details: ...') from error
    raise error
  monkeypatch.setattr(mngr, 'restore', failing_restore)
  for read in (lambda: store.restore(mngr, 5, state_lib.abstract_targets(spec), _iterator()),
               lambda: store.read_meta(mngr, 5)):
    with pytest.raises(BaseException) as err:
      read()
    assert not isinstance(err.value, UserError), err.value
    assert err.value is error or err.value.__cause__ is error

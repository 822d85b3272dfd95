"""Growth through checkpoints, as it runs for real (Orbax pads the new rows while restoring): exact
preserves the function, paper does not (and why), optimizer carry/reset, freeze_old; strictness of
`grow`, and nothing written on error."""
import jax
import numpy as np
import pytest

from tests.helpers import damage_array_bytes, small_config, tree_digest
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import transformer as model_lib
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import growth
from tokenformer_jax.training import growth_compose
from tokenformer_jax.training import loop
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step as step_lib

BIG = {'qkv': 96, 'proj': 80, 'ffn': 384}
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 33)).astype(np.int32)

@pytest.fixture(scope='module')
def source(data_cache, tmp_path_factory):
  """A trained workdir: 4 steps, so the Adam moments are not zero."""
  workdir = str(tmp_path_factory.mktemp('source'))
  c = small_config(data_cache)
  c.train.steps = 4
  loop.train(c, workdir)
  return workdir

def _load(cfg, workdir):
  """(config, spec, state) of the workdir's latest checkpoint, τ adopted as training does."""
  mngr = store.manager(workdir, create=False)
  step = mngr.latest_step()
  meta = store.read_meta(mngr, step)
  cfg = run_record.adopt_frozen_tau(cfg, meta)
  spec = state_lib.make_spec(cfg, meta['vocab_size'], sharding.make_mesh(cfg.mesh))
  return cfg, spec, store.restore(mngr, step, state_lib.abstract_targets(spec))

def _grow(source, data_cache, tmp_path_factory, groups, policy='exact', optimizer='carry'):
  """Grows the source into a new workdir with growth.grow; (config, spec, state) of the result."""
  b = small_config(data_cache)
  for group in groups:
    b.model[f'n_{group}'] = BIG[group]
  b.growth.policy, b.growth.optimizer = policy, optimizer
  dst = str(tmp_path_factory.mktemp('grown'))
  growth.grow(b, source, dst)
  return _load(b, dst)

def _logits(spec, params):
  # jitted: one compile, not one per op
  return np.asarray(jax.jit(lambda p: state_lib.merge(spec, p)(TOKENS[:, :-1]))(params))

@pytest.fixture(scope='module')
def small(source, data_cache):
  return _load(small_config(data_cache), source)

@pytest.fixture(scope='module')
def grown_all(source, data_cache, tmp_path_factory):
  """Every group grown, exact policy, optimizer carried."""
  return _grow(source, data_cache, tmp_path_factory, ('qkv', 'proj', 'ffn'))

@pytest.mark.parametrize('groups', [('qkv',), ('proj',), ('ffn',), ('qkv', 'proj', 'ffn')])
def test_exact_growth_preserves_logits(small, source, data_cache, tmp_path_factory, grown_all, groups):
  c, spec, state = small
  _, spec_b, grown = (grown_all if len(groups) == 3 else
                      _grow(source, data_cache, tmp_path_factory, groups))
  before, after = _logits(spec, state['params']), _logits(spec_b, grown['params'])
  assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
  for group in groups:
    name = model_lib.TOKEN_GROUPS[group][0]
    keys = np.asarray(grown['params']['blocks'][name]['key_tokens'])
    values = np.asarray(grown['params']['blocks'][name]['value_tokens'])
    n_old = c.model[f'n_{group}']
    assert keys.shape[1] == BIG[group] and not keys[:, n_old:].any()  # new keys zero
    assert values[:, n_old:].std() > 0                                 # new values random
    np.testing.assert_array_equal(keys[:, :n_old],
                                  np.asarray(state['params']['blocks'][name]['key_tokens']))

@pytest.mark.slow
def test_paper_growth_changes_logits_and_why(small, source, data_cache, tmp_path_factory, grown_all):
  _, spec, state = small
  before = _logits(spec, state['params'])
  cfg_b, spec_b, grown = _grow(source, data_cache, tmp_path_factory, ('qkv', 'proj', 'ffn'),
                               policy='paper')
  assert cfg_b.model.n_ref_ffn == 0
  change = np.max(np.abs(_logits(spec_b, grown['params']) - before)) / np.max(np.abs(before))
  # Random new keys add scores, and τ = √n moves from √256 to √384 in the FFN (+22%), so the
  # output of every Pattention changes: measured ≈ 12% of the logits' scale.
  assert change > 1e-2, change
  # Even with zero new keys, recomputing τ alone changes the function (the reference's behaviour):
  # the exact growth's parameters under the paper config's τ = √n.
  exact = grown_all[2]
  tau_change = np.max(np.abs(_logits(spec_b, exact['params']) - before)) / np.max(np.abs(before))
  assert tau_change > 1e-2, tau_change

@pytest.mark.slow
def test_carry_keeps_old_moments_and_zeroes_new(small, grown_all):
  _, _, state = small
  _, _, grown = grown_all
  old, new = state['opt_state'][1][0], grown['opt_state'][1][0]
  for moment in ('mu', 'nu'):
    o = np.asarray(getattr(old, moment)['blocks']['mlp']['key_tokens'])
    n = np.asarray(getattr(new, moment)['blocks']['mlp']['key_tokens'])
    np.testing.assert_array_equal(n[:, :o.shape[1]], o)
    assert not n[:, o.shape[1]:].any() and np.abs(o).max() > 0
  assert int(grown['step']) == int(state['step']) == 4
  assert int(new.count) == int(old.count)

@pytest.mark.slow
def test_reset_starts_fresh(source, data_cache, tmp_path_factory):
  _, _, grown = _grow(source, data_cache, tmp_path_factory, ('ffn',), optimizer='reset')
  adam = grown['opt_state'][1][0]
  assert int(grown['step']) == 0 and int(adam.count) == 0
  assert not any(np.asarray(x).any() for x in jax.tree.leaves(adam.mu))

@pytest.mark.slow
def test_freeze_old_trains_only_new_tokens(small, grown_all):
  c, _, _ = small
  cfg_b, spec_b, grown = grown_all
  frozen = model_lib.token_counts(c.model)
  # a record as grown checkpoints wrote it before depth and width could grow: the counts only
  spec_frozen = state_lib.make_spec(cfg_b, spec_b.vocab_size, spec_b.mesh, grown_from={'counts': frozen})
  before = jax.tree.map(np.asarray, grown['params'])
  train_step = step_lib.make_train_step(spec_frozen, cfg_b)
  copy = jax.tree.map(lambda x: x.copy(), grown)     # the step donates its input
  after, _ = train_step(copy, step_lib.global_batch(spec_frozen, cfg_b, TOKENS))
  after = jax.tree.map(np.asarray, after['params'])
  np.testing.assert_array_equal(after['embedding'], before['embedding'])
  np.testing.assert_array_equal(after['final_norm_scale'], before['final_norm_scale'])
  for group, names in model_lib.TOKEN_GROUPS.items():
    n_old = frozen[group]
    for name in names:
      for table in model_lib.TOKEN_TABLES:
        a, b = after['blocks'][name][table], before['blocks'][name][table]
        np.testing.assert_array_equal(a[:, :n_old], b[:, :n_old])
        assert np.abs(a[:, n_old:] - b[:, n_old:]).max() > 0

# ---- grow() on checkpoints: strictness, nothing written on error ----

@pytest.mark.parametrize('change,needle', [
    ({'n_ffn': 128}, 'model.n_ffn: checkpoint 256, config 128: a growth cannot make it smaller'),
    ({'num_layers': 1}, 'model.num_layers: checkpoint 2, config 1: a growth cannot make it smaller'),
    ({'d_model': 96}, 'model.d_model: checkpoint 64, config 96: width grows by an integer factor'),
    ({'d_model': 128}, 'model.num_heads: checkpoint 4, config 4: heads keep their size (d_model/num_heads '
                       '= 16), so with d_model ×2 num_heads must be 8'),
    ({'num_heads': 8}, 'model.num_heads: checkpoint 4, config 8: heads keep their size'),
    ({'rotary_pct': 0.5}, 'model.rotary_pct: checkpoint 0.25, config 0.5'),
    ({'kind': 'dense'}, "model.kind: checkpoint 'tokenformer', config 'dense'"),
    ({'vocab_size': 1024}, 'model.vocab_size: checkpoint 0, config 1024'),
])
@pytest.mark.slow
def test_grow_refuses_other_changes(source, data_cache, tmp_path, change, needle):
  b = small_config(data_cache)
  for key, value in change.items():
    b.model[key] = value
  with pytest.raises(UserError) as err:
    growth.grow(b, source, str(tmp_path / 'dst'))
  assert needle in str(err.value)
  assert not (tmp_path / 'dst' / 'checkpoints').exists() or not any(
      (tmp_path / 'dst' / 'checkpoints').iterdir())

@pytest.mark.slow
def test_grow_refuses_existing_destination_and_missing_source(source, data_cache, tmp_path):
  b = small_config(data_cache)
  b.model.n_ffn = 512
  with pytest.raises(UserError, match='already holds a checkpoint'):
    growth.grow(b, source, source)
  with pytest.raises(UserError, match='no checkpoint to grow'):
    growth.grow(b, str(tmp_path / 'empty'), str(tmp_path / 'dst'))

@pytest.mark.slow
def test_grown_checkpoint_trains_on(source, data_cache, tmp_path):
  b = small_config(data_cache)
  b.model.n_ffn = 512
  b.train.steps = 8
  dst = str(tmp_path / 'dst')
  before = tree_digest(source)
  assert growth.grow(b, source, dst) == 4  # carry: the step goes on
  assert tree_digest(source) == before  # growth only reads the source
  meta = store.read_meta(store.manager(dst), 4)
  assert meta['config']['model']['n_ref_ffn'] == 256 and meta['grown_from']['counts']['ffn'] == 256
  source_meta = store.read_meta(store.manager(source), 4)
  assert meta['tokenizer_sha256'] == source_meta['tokenizer_sha256']
  other = b.copy_and_resolve_references()
  other.data.vocab_size, other.data.cache_dir = 300, str(tmp_path / 'other_data')
  with pytest.raises(UserError, match='trained with tokenizer sha256 .* but the data in .*other_data'):
    loop.train(other, dst)
  assert not (tmp_path / 'other_data').exists()  # the data prepared for the refused run is gone again
  result = loop.train(b, dst)  # the config leaves n_ref at 0: τ is taken from the checkpoint
  assert result.step == 8 and result.cfg.model.n_ref_ffn == 256 and b.model.n_ref_ffn == 0
  assert sorted(result.train_losses) == [5, 8]

def test_a_grown_checkpoint_is_written_as_training_writes(source, data_cache, tmp_path):
  b = small_config(data_cache)
  b.model.n_ffn = 512
  growth.grow(b, source, str(tmp_path / 'dst'))
  # uncompressed (store.manager), so the array's bytes lie in the checkpoint's files as they are
  damage_array_bytes(tmp_path / 'dst' / 'checkpoints' / '4')

def test_random_values_do_not_depend_on_how_they_are_split():
  chunk = growth_compose.CHUNK
  full = growth_compose.normals(seed=3, stream=7, start=0, count=2 * chunk + 61)
  for cuts in ((0, 3, 4, 2 * chunk + 61), (0, chunk - 1, chunk + 1, 2 * chunk + 60, 2 * chunk + 61)):
    parts = [growth_compose.normals(3, 7, a, b - a) for a, b in zip(cuts, cuts[1:])]
    np.testing.assert_array_equal(np.concatenate(parts), full)
  assert not np.array_equal(full, growth_compose.normals(3, 8, 0, 2 * chunk + 61))   # streams differ
  assert not np.array_equal(full[:chunk], full[chunk:2 * chunk])                      # chunks differ
  assert growth_compose.stream_id('blocks/mlp/key_tokens', 1, 0) != growth_compose.stream_id(
      'blocks/mlp/key_tokens', 1, 1) != growth_compose.stream_id('blocks/mlp/value_tokens', 1, 1)
  big = growth_compose.normals(seed=0, stream=0, start=5, count=200_000)
  assert abs(big.mean()) < 0.01 and abs(big.std() - 1.0) < 0.01
  assert abs(np.corrcoef(big[:-1], big[1:])[0, 1]) < 0.01


@pytest.mark.slow
def test_a_grown_workdir_evaluates_and_generates_before_it_trains(tmp_path):
  """The grown workdir has no prepared data of its own until it trains: eval and generate read the data
  its source prepared (through a chain of growths), and write nothing there or in the source."""
  from tests.helpers import FAST, run_main
  source, grown, twice = tmp_path / 'source', tmp_path / 'grown', tmp_path / 'twice'
  code, _, err = run_main(*FAST, workdir=source)
  assert code == 0, err
  before = tree_digest(source)
  for dst, src, n_ffn in ((grown, source, 96), (twice, grown, 128)):
    code, _, err = run_main(*FAST, f'--config.model.n_ffn={n_ffn}', '--mode=grow', f'--grow_from={src}',
                            workdir=dst)
    assert code == 0, err
  code, out, err = run_main(*FAST, '--config.model.n_ffn=96', '--mode=eval', workdir=grown)
  assert code == 0 and 'eval of step 2 on the validation split: loss' in out, err
  code, out, err = run_main(*FAST, '--config.model.n_ffn=128', '--mode=generate', '--prompt=And God',
                            '--max_new_tokens=3', workdir=twice)   # two growths back
  assert code == 0 and 'And God' in out, err
  assert tree_digest(source) == before
  assert not (grown / 'data').exists() and not (twice / 'data').exists()

"""Growth in depth and width as well as tokens, for both kinds: exact logits, the layout of the grown
arrays, gradients and carried Adam moments mapped alike, training and symmetry breaking, freeze_old, and
the refusals GROWTH_RULES makes. (Onto other meshes: growth_mesh_test.py.)"""
import jax
import numpy as np
import pytest

from tests.helpers import ROOT, small_config
from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import growth
from tokenformer_jax.training import growth_layout
from tokenformer_jax.training import loop
from tokenformer_jax.training import state as state_lib
from tokenformer_jax.training import step as step_lib

TOKENS = np.random.default_rng(0).integers(0, 512, (4, 33)).astype(np.int32)
SOURCE = {'num_layers': 2, 'd_model': 32, 'num_heads': 2, 'n_qkv': 32, 'n_proj': 32, 'n_ffn': 64}
GROWTHS = {
    'depth': {'num_layers': 4},
    'width': {'d_model': 64, 'num_heads': 4},
    'tokens': {'n_qkv': 48, 'n_proj': 40, 'n_ffn': 96, 'mlp_dim': 160},
    'all': {'num_layers': 3, 'd_model': 64, 'num_heads': 4, 'n_qkv': 48, 'n_ffn': 96, 'mlp_dim': 320},
}


def _config(cache, kind, **model):
  c = small_config(cache)
  c.model.kind = kind
  for key, value in {**SOURCE, **model}.items():
    c.model[key] = value
  c.data.seq_len, c.train.batch_size, c.train.steps = 32, 4, 3
  return c


@pytest.fixture(scope='module', params=['tokenformer', 'dense'])
def source(request, data_cache, tmp_path_factory):
  """(kind, workdir) of a 3-step run: its Adam moments are not zero."""
  workdir = str(tmp_path_factory.mktemp(f'source_{request.param}'))
  loop.train(_config(data_cache, request.param), workdir)
  return request.param, workdir


def _load(cfg, workdir):
  mngr = store.manager(workdir, create=False)
  meta = store.read_meta(mngr, mngr.latest_step())
  cfg = run_record.adopt_frozen_tau(cfg, meta)
  spec = state_lib.make_spec(cfg, meta['vocab_size'], sharding.make_mesh(cfg.mesh))
  state = store.restore(mngr, mngr.latest_step(), state_lib.abstract_targets(spec))
  return cfg, spec, jax.tree.map(np.asarray, state), meta


def _grow(source, cache, tmp_path, change, **grow):
  kind, workdir = source
  b = _config(cache, kind, **change)
  for key, value in grow.items():
    b.growth[key] = value
  dst = str(tmp_path / f'grown_{len(list(tmp_path.iterdir()))}')
  growth.grow(b, workdir, dst)
  return _load(b, dst)


def _logits(spec, params):
  # jitted: one compile, not one per op
  return np.asarray(jax.jit(lambda p: state_lib.merge(spec, p)(TOKENS[:, :-1]))(params))


@pytest.mark.slow
@pytest.mark.parametrize('placement', ['append', 'interleave'])
@pytest.mark.parametrize('dims', list(GROWTHS))
def test_growth_keeps_the_logits(source, data_cache, tmp_path, dims, placement):
  if placement == 'interleave' and dims not in ('depth', 'all'):
    pytest.skip('placement only matters for depth')
  kind, workdir = source
  _, spec_s, state_s, _ = _load(_config(data_cache, kind), workdir)
  cfg, spec, grown, meta = _grow(source, data_cache, tmp_path, GROWTHS[dims], depth_placement=placement)
  before, after = _logits(spec_s, state_s['params']), _logits(spec, grown['params'])
  assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))
  record = meta['grown_from']
  assert record['width'] == cfg.model.d_model // 32 and record['depth_placement'] == placement
  assert len(record['layers']) == 2 and int(grown['step']) == int(state_s['step']) == 3
  new_blocks = sorted(set(range(cfg.model.num_layers)) - set(record['layers']))
  assert new_blocks == {('depth', 'append'): [2, 3], ('depth', 'interleave'): [1, 3],
                        ('all', 'append'): [2], ('all', 'interleave'): [1]}.get((dims, placement), [])
  for path, table in jax.tree_util.tree_flatten_with_path(grown['params']['blocks'])[0]:
    parts = ('blocks',) + tuple(store.path_string(path).split('/'))
    for i in new_blocks:   # a new block writes nothing into the residual stream; the rest is drawn
      assert (table[i].std() > 0) != growth_layout.writes_residual(parts), (parts, i)


@pytest.mark.slow
@pytest.mark.parametrize('noise', [0.1, 0.0])
def test_width_splits_what_reads_the_stream_and_repeats_what_writes_it(source, data_cache, tmp_path, noise):
  kind, workdir = source
  _, _, state_s, _ = _load(_config(data_cache, kind), workdir)
  _, _, grown, _ = _grow(source, data_cache, tmp_path, GROWTHS['width'], width_noise=noise)
  old, new = state_s['params'], grown['params']
  halves = lambda x, axis: np.split(x, 2, axis=axis)
  np.testing.assert_array_equal(halves(new['embedding'], 1)[1], old['embedding'])
  np.testing.assert_allclose(sum(halves(new['final_norm_scale'], 0)), old['final_norm_scale'], rtol=1e-6)
  if kind == 'tokenformer':
    reads, writes = new['blocks']['mlp']['key_tokens'], new['blocks']['mlp']['value_tokens']
    read_axis, source_read = 2, old['blocks']['mlp']['key_tokens']
    np.testing.assert_array_equal(halves(writes, 2)[1], old['blocks']['mlp']['value_tokens'])
  else:
    down, source_read = new['blocks']['mlp']['down']['kernel'], old['blocks']['mlp']['down']['kernel']
    np.testing.assert_allclose(*halves(sum(halves(down, 1)), 2), atol=1e-7)   # each output copy sums alike
    reads, read_axis = halves(down, 2)[0], 1
  a, b = halves(reads, read_axis)
  np.testing.assert_allclose(a + b, source_read, atol=1e-7)     # the copies sum to the source weight
  assert (np.abs(a - b).max() > 1e-4) == (noise > 0)            # and differ by the noise


@pytest.mark.slow
def test_gradients_and_carried_moments_map_alike(source, data_cache, tmp_path):
  """Without noise, the grown model's gradient at a copy of a source element is the source's gradient
  times growth_layout.moment_scale, and the carried moments are scaled the same (mu) or squared (nu)."""
  kind, workdir = source
  cfg_s, spec_s, state_s, _ = _load(_config(data_cache, kind), workdir)
  cfg, spec, grown, meta = _grow(source, data_cache, tmp_path, GROWTHS['all'], width_noise=0.0)
  g = growth_layout.from_record(meta['grown_from'], cfg.model)
  loss = lambda sp: lambda params: step_lib.token_losses(sp, params, TOKENS).mean()
  grad_s = jax.jit(jax.grad(loss(spec_s)))(state_s['params'])   # jitted: one compile, not one per op
  grad_b = jax.jit(jax.grad(loss(spec)))(grown['params'])
  adam_s, adam_b = state_s['opt_state'][1][0], grown['opt_state'][1][0]
  assert int(adam_b.count) == int(adam_s.count) == 3
  for path, gs in jax.tree_util.tree_flatten_with_path(grad_s)[0]:
    name = store.path_string(path)
    parts = tuple(name.split('/'))
    axes = growth_layout.array_axes(parts, g, 32)
    scale = growth_layout.moment_scale(axes, 2)
    at = lambda tree: _source_copy(_get(tree, parts), parts, axes, g)
    np.testing.assert_allclose(at(grad_b), scale * np.asarray(gs), rtol=2e-3, atol=1e-6 * np.abs(gs).max(),
                               err_msg=name)
    np.testing.assert_allclose(at(adam_b.mu), scale * _get(adam_s.mu, parts), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(at(adam_b.nu), scale ** 2 * _get(adam_s.nu, parts), rtol=1e-6, err_msg=name)
    grown_nu = np.asarray(_get(adam_b.nu, parts))   # new positions start at zero
    assert np.count_nonzero(grown_nu) <= np.count_nonzero(_get(adam_s.nu, parts)) * 2 ** sum(
        1 for a in axes if a is not None and a.copies > 1)


@pytest.mark.slow
def test_reset_keeps_the_function_and_starts_the_optimizer_afresh(source, data_cache, tmp_path):
  kind, workdir = source
  _, spec_s, state_s, _ = _load(_config(data_cache, kind), workdir)
  _, spec, grown, _ = _grow(source, data_cache, tmp_path, GROWTHS['all'], optimizer='reset')
  adam = grown['opt_state'][1][0]
  assert int(grown['step']) == 0 and int(adam.count) == 0
  assert not any(np.asarray(x).any() for x in jax.tree.leaves((adam.mu, adam.nu)))
  before, after = _logits(spec_s, state_s['params']), _logits(spec, grown['params'])
  assert np.max(np.abs(after - before)) <= 1e-5 * np.max(np.abs(before))


def _get(tree, parts):
  for part in parts:
    tree = tree[part]
  return np.asarray(tree)


def _source_copy(x, parts, axes, g):
  """The last copy of the source's elements in a grown array (source blocks, old tokens)."""
  if growth_layout.is_stacked(parts):
    x = x[list(g.layers)]
  for i, axis in enumerate(axes, start=growth_layout.is_stacked(parts)):
    if axis is not None:
      start = (axis.copies - 1) * axis.src
      x = np.take(x, np.arange(start, start + axis.src), axis=i)
  return x


@pytest.mark.slow
def test_grown_model_trains_and_its_copies_part(source, data_cache, tmp_path):
  kind, _ = source
  cfg, spec, grown, _ = _grow(source, data_cache, tmp_path, GROWTHS['all'])
  step = step_lib.make_train_step(spec, cfg)
  state, losses = jax.device_put(grown), []
  for _ in range(4):
    state, metrics = step(state, step_lib.global_batch(spec, cfg, TOKENS))
    losses.append(float(metrics['loss']))
  assert losses[-1] < losses[0] - 0.01, losses
  params = jax.tree.map(np.asarray, state['params'])
  writes = (params['blocks']['mlp']['value_tokens'] if kind == 'tokenformer'
            else params['blocks']['mlp']['down']['kernel'])
  for x in (params['embedding'], writes[0]):        # block 0 is a source block in either placement
    first, second = np.split(x, 2, axis=-1)
    assert np.abs(first - second).max() > 1e-5       # the repeated halves are no longer equal


@pytest.mark.slow
def test_freeze_old_trains_only_what_is_new(source, data_cache, tmp_path):
  kind, _ = source
  cfg, spec, grown, meta = _grow(source, data_cache, tmp_path, GROWTHS['all'])
  frozen = state_lib.make_spec(cfg, spec.vocab_size, spec.mesh, grown_from=meta['grown_from'])
  g = growth_layout.from_record(meta['grown_from'], cfg.model)
  after, _ = step_lib.make_train_step(frozen, cfg)(jax.device_put(grown),
                                                   step_lib.global_batch(frozen, cfg, TOKENS))
  after = jax.tree.map(np.asarray, after['params'])
  for path, before in jax.tree_util.tree_flatten_with_path(grown['params'])[0]:
    parts = tuple(store.path_string(path).split('/'))
    old = np.prod(np.broadcast_arrays(*growth_layout.old_masks(parts, before.shape, g, 32)), axis=0) > 0
    moved = _get(after, parts) != before
    assert not moved[old].any(), parts                 # the source's own elements stay
    assert moved[~old].any(), parts                    # what is new trains


@pytest.mark.slow
@pytest.mark.parametrize('change,needle', [
    ({'d_model': 64, 'num_heads': 4, 'mlp_dim': 128},
     'model.mlp_dim: checkpoint 0, config 128: the MLP width (mlp_dim, 0: 4·d_model) must be at least ×2 '
     "the checkpoint's 128"),
    ({'d_model': 64, 'num_heads': 2}, 'so with d_model ×2 num_heads must be 4'),
    ({'d_model': 48, 'num_heads': 3}, 'model.d_model: checkpoint 32, config 48: width grows by an integer'),
    ({'num_layers': 1}, 'model.num_layers: checkpoint 2, config 1: a growth cannot make it smaller'),
])
def test_refusals_write_nothing(source, data_cache, tmp_path, change, needle):
  kind, workdir = source
  if 'mlp_dim' in change and kind != 'dense':
    pytest.skip('mlp_dim is the dense MLP width')
  with pytest.raises(UserError) as err:
    _grow(source, data_cache, tmp_path, change)
  assert needle in str(err.value)
  assert not any(p.name == 'checkpoints' and any(p.iterdir()) for p in tmp_path.rglob('checkpoints'))


@pytest.mark.slow
def test_a_released_file_grows_in_tokens_only(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  from tests.helpers import reference_state_dict
  c = _config('', 'tokenformer')
  path = str(tmp_path / 'released.safetensors')
  safetensors_numpy.save_file(reference_state_dict(c.model), path)
  c.model.num_layers = 3
  with pytest.raises(UserError, match='released.safetensors has 2 layers of d_model 32, the config 3 of 32: '
                                      'a released file grows in parameter tokens only; import it'):
    growth.grow(c, path, str(tmp_path / 'dst'))
  assert not (tmp_path / 'dst' / 'checkpoints').exists()


def test_growth_keys_are_validated():
  c = small_config()
  c.growth.depth_placement = 'middle'
  with pytest.raises(UserError, match="growth.depth_placement must be one of \\('append', 'interleave'\\)"):
    config_lib.validate(c)
  c.growth.depth_placement, c.growth.width_noise = 'append', -0.1
  with pytest.raises(UserError, match='growth.width_noise must be >= 0'):
    config_lib.validate(c)


@pytest.mark.parametrize('arm', ['tokens', 'depth', 'depth_interleave', 'width', 'all', 'dense-all',
                                 'dense-tokens', 'width-quick'])
def test_grow_dims_experiment_stages_are_growths(arm):
  """studies/grow_dims/experiment.py: every stage is valid and a growth of the one before; the TokenFormer
  arms end at tiny's block parameters (the non-embedding ones but the final LayerNorm's 2·d)."""
  from tokenformer_jax.model import transformer as model_lib
  c = config_lib.load_experiment(f'{ROOT}/studies/grow_dims/experiment.py:{arm}')
  configs = [config_lib.apply_overrides(c, {**stage, 'stages': ()}) for stage in c.stages]
  for before, after in zip(configs, configs[1:]):
    config_lib.validate(after)
    assert not run_record.growth_differences(before.model.to_dict(), after.model)
  tiny = config_lib.load_experiment(f'{ROOT}/experiments/tiny.py')
  blocks = lambda m: model_lib.nonembedding_params(m) - 2 * m.d_model
  if not arm.startswith('dense') and not arm.endswith('quick'):
    assert len(configs) == 4
    assert blocks(configs[-1].model) == blocks(tiny.model) == 8 * blocks(configs[0].model)

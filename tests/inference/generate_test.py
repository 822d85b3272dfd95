"""KV-cached generation: the same tokens as the full forward pass, batching, sampling, compilation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import cpu_model, script_module, small_config
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import generate
from tokenformer_jax.model import transformer as model_lib

# the reference: the training forward pass for every token
full_forward = script_module('benchmarks/full_forward.py')

VOCAB = 128
LIMIT = 120          # the "tokenizer" vocab: ids 120..127 are padding rows, never produced
CONTEXT = 64
PROMPTS = [[5, 6, 7, 8, 9], [1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]


def _model(**overrides):
  c = small_config()
  # larger than the init scales so that a random model's greedy continuations vary
  c.model.embed_init_std = 0.1
  c.model.value_init_std = 0.3
  for key, value in overrides.items():
    c.model[key] = value
  graphdef, params = nnx.split(model_lib.build(cpu_model(c.model), VOCAB, seed=1), nnx.Param)
  return graphdef, nnx.to_pure_dict(params)


@pytest.fixture(scope='module')
def model():
  return _model()


@pytest.fixture(scope='module')
def greedy(model):
  """A greedy generator shared by the tests (compiled once for PROMPTS' shapes)."""
  return _generator(model[0])


def _generator(graphdef, eos_id=None, **sampling):
  return generate.Generator(graphdef, context=CONTEXT, vocab_limit=LIMIT, eos_id=eos_id,
                            sampling=dataclasses.replace(generate.GREEDY, **sampling))


def _no_cache(graphdef, params, prompts, n, eos_id=None, seed=0, **sampling):
  return full_forward.generate_without_cache(graphdef, params, prompts, n, context=CONTEXT,
                                            vocab_limit=LIMIT, eos_id=eos_id, seed=seed,
                                            sampling=dataclasses.replace(generate.GREEDY, **sampling))


def test_cached_greedy_equals_full_forward_argmax(model, greedy):
  graphdef, params = model
  cached = greedy.generate(params, PROMPTS, 24, seed=0)
  assert cached == _no_cache(graphdef, params, PROMPTS, 24)
  assert all(len(row) == 24 for row in cached)
  assert len({tuple(row) for row in cached}) == 3 and len(set(cached[0])) > 2  # not degenerate


@pytest.mark.parametrize('overrides', [{'n_ref_qkv': 48, 'n_ref_proj': 40, 'n_ref_ffn': 200},
                                       {'kind': 'dense', 'mlp_dim': 96}], ids=['grown_frozen_tau', 'dense'])
def test_cached_greedy_equals_full_forward_argmax_other_models(overrides):
  graphdef, params = _model(**overrides)
  prompts = PROMPTS[:2]
  cached = _generator(graphdef).generate(params, prompts, 12, seed=0)
  assert cached == _no_cache(graphdef, params, prompts, 12)


def test_batch_of_different_lengths_equals_each_prompt_alone(model, greedy):
  _, params = model
  batched = greedy.generate(params, PROMPTS, 16, seed=0)
  assert batched == [greedy.generate(params, [p], 16, seed=0)[0] for p in PROMPTS]


def test_one_compilation_for_any_number_of_tokens(model, greedy):
  _, params = model
  greedy.generate(params, PROMPTS, 3, seed=0)
  compiled = dict(greedy.traces)
  for n in (1, 17, 40):  # one bucket of output and cache lengths: nothing new is traced
    greedy.generate(params, PROMPTS, n, seed=0)
  assert greedy.traces == compiled and compiled['decode'] >= 1


@pytest.mark.slow
def test_sampling_with_seed_matches_uncached_and_is_reproducible(model):
  graphdef, params = model
  sampling = dict(temperature=1.0, top_k=20, top_p=0.95)
  generator = _generator(graphdef, **sampling)
  a = generator.generate(params, PROMPTS, 20, seed=7)
  assert a == generator.generate(params, PROMPTS, 20, seed=7)
  assert a != generator.generate(params, PROMPTS, 20, seed=8)
  assert a == _no_cache(graphdef, params, PROMPTS, 20, seed=7, **sampling)
  assert max(max(row) for row in a) < LIMIT


def test_stops_at_end_of_text(model, greedy):
  graphdef, params = model
  full = greedy.generate(params, PROMPTS, 24, seed=0)
  eos = full[0][2]  # row 0 produces it as its third token
  stopped = _generator(graphdef, eos_id=eos).generate(params, PROMPTS, 24, seed=0)
  assert stopped[0] == full[0][:2]
  for row, whole in zip(stopped, full):
    assert row == (whole[:whole.index(eos)] if eos in whole else whole)


def test_prompt_longer_than_context_is_refused(model, greedy):
  _, params = model
  generator = greedy
  with pytest.raises(UserError, match='prompt 1 has 65 tokens, more than the model context of 64'):
    generator.generate(params, [[1], [2] * 65], 4, seed=0)
  with pytest.raises(UserError, match='prompt 0 is empty'):
    generator.generate(params, [[]], 4, seed=0)
  with pytest.raises(UserError, match='max_new_tokens must be positive'):
    generator.generate(params, [[1]], 0, seed=0)


def test_generation_stops_at_the_context(model, greedy):
  graphdef, params = model
  prompts = [[3] * 60, [4] * 10, [5] * 64]  # batch 3, as PROMPTS: no new compilation
  out = greedy.generate(params, prompts, 10, seed=0)
  assert [len(row) for row in out] == [CONTEXT - 60 + 1, 10, 1]
  assert out == _no_cache(graphdef, params, prompts, 10)


def _draws(logits, sampling, n=4000, vocab_limit=None):
  logits_BxV = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (n, len(logits)))
  ids = generate.sample_logits(logits_BxV, jax.random.key(0), sampling, vocab_limit or len(logits))
  return np.bincount(np.asarray(ids), minlength=len(logits)) / n


def test_sample_logits_filters():
  logits = np.log([0.5, 0.3, 0.15, 0.05])
  def S(**settings):
    return dataclasses.replace(generate.GREEDY, **settings)
  np.testing.assert_array_equal(_draws(logits, S(temperature=0.0)), [1, 0, 0, 0])
  # padding ids are never produced, even when their logit is the largest
  np.testing.assert_array_equal(_draws([0.0, 1.0, 5.0], S(), vocab_limit=2), [0, 1, 0])
  assert set(np.flatnonzero(_draws([0.0, 1.0, 5.0], S(temperature=1.0), vocab_limit=2))) == {0, 1}
  np.testing.assert_allclose(_draws(logits, S(temperature=1.0)), [0.5, 0.3, 0.15, 0.05], atol=0.03)
  np.testing.assert_allclose(_draws(logits, S(temperature=1.0, top_k=2)), [0.625, 0.375, 0, 0], atol=0.03)
  np.testing.assert_allclose(_draws(logits, S(temperature=1.0, top_p=0.7)), [0.625, 0.375, 0, 0], atol=0.03)
  np.testing.assert_allclose(_draws(logits, S(temperature=1.0, top_p=0.85)),
                             np.array([0.5, 0.3, 0.15, 0]) / 0.95, atol=0.03)
  np.testing.assert_array_equal(_draws(logits, S(temperature=1.0, top_p=0.1)), [1, 0, 0, 0])
  # temperature sharpens (→ argmax) or flattens (→ uniform) the distribution
  np.testing.assert_array_equal(_draws(logits, S(temperature=0.01)), [1, 0, 0, 0])
  np.testing.assert_allclose(_draws(logits, S(temperature=100.0)), [0.25] * 4, atol=0.03)


@pytest.mark.parametrize('kwargs,message', [({'temperature': -1.0}, 'temperature'),
                                            ({'top_k': -2}, 'top_k'), ({'top_p': 0.0}, 'top_p'),
                                            ({'top_p': 1.5}, 'top_p')])
def test_bad_sampling_settings(kwargs, message):
  with pytest.raises(UserError, match=message):
    dataclasses.replace(generate.GREEDY, **kwargs)


def test_read_prompts(tmp_path):
  path = tmp_path / 'prompts.txt'
  path.write_text('In the beginning\n\nAnd God said\n')
  assert generate.read_prompts('Hi', str(path)) == ['Hi', 'In the beginning', 'And God said']
  with pytest.raises(UserError, match='needs --prompt or --prompt_file'):
    generate.read_prompts(None, None)
  with pytest.raises(UserError, match='cannot read --prompt_file'):
    generate.read_prompts(None, str(tmp_path / 'missing.txt'))

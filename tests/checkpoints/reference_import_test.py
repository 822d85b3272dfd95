"""Import of reference checkpoints: a synthetic state dict in the GPT-NeoX naming → our checkpoint, whose
logits must equal the independent NumPy forward pass on the same weights; every mismatch is reported."""
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from tests import reference_numpy as ref
from tests.helpers import damage_array_bytes, reference_state_dict, small_config, write_hf_tokenizer
from tokenformer_jax.checkpoints import reference_import
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import evaluate
from tokenformer_jax.inference import generate
from tokenformer_jax.inference import loading

VOCAB = 512  # small_config's data.vocab_size; already a multiple of 128


def _config():
  c = small_config()
  c.model.num_layers = 2
  return c


def numpy_params(sd, L):
  """The same weights in the layout tests/reference_numpy.forward reads (float64)."""
  get = lambda name: np.asarray(sd[name], np.float64)
  blocks = {}
  for ours, theirs in (('query', 'attention.query'), ('key', 'attention.key'), ('value', 'attention.value'),
                       ('proj', 'attention.proj'), ('mlp', 'mlp')):
    blocks[ours] = {f'{kind}_tokens': np.stack([get(f'sequential.{i + 2}.{theirs}.{kind}_param_tokens')
                                                for i in range(L)]) for kind in ('key', 'value')}
  return {'embedding': get('sequential.0.word_embeddings.weight'), 'blocks': blocks,
          'final_norm_scale': get(f'sequential.{L + 3}.norm.weight'),
          'final_norm_bias': get(f'sequential.{L + 3}.norm.bias')}


def _check_logits(cfg, workdir, sd):
  restored = loading.load(cfg, str(workdir))
  model = nnx.merge(restored.graphdef, restored.params)
  tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, 24))
  got = np.asarray(model(jnp.asarray(tokens)))
  params = numpy_params(sd, cfg.model.num_layers)
  for b in range(2):
    want = ref.forward(params, tokens[b], cfg.model.num_heads)
    assert np.max(np.abs(got[b] - want)) <= 1e-4 * np.max(np.abs(want))
  return restored


def test_safetensors_import_matches_numpy_reference(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  cfg = _config()
  sd = reference_state_dict(cfg.model)
  path = tmp_path / 'model.safetensors'
  safetensors_numpy.save_file(sd, str(path))
  reference_import.convert(cfg, str(tmp_path / 'w'), str(path))
  restored = _check_logits(cfg, tmp_path / 'w', sd)
  assert restored.step == 0 and restored.meta['imported_from'] == str(path)
  with pytest.raises(UserError, match='already holds checkpoints'):
    reference_import.convert(cfg, str(tmp_path / 'w'), str(path))
  # written as training writes (store.manager): uncompressed, so the array's bytes lie in the files as is
  damage_array_bytes(tmp_path / 'w' / 'checkpoints' / '0')


def test_torch_import_unwraps_and_casts(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is an optional extra')
  cfg = _config()
  sd = reference_state_dict(cfg.model)
  path = tmp_path / 'model.bin'
  # nested under 'module' as trainers save it; bfloat16 tensors are read as float32
  torch.save({'module': {k: torch.from_numpy(v) for k, v in sd.items()}}, str(path))
  reference_import.convert(cfg, str(tmp_path / 'w'), str(path))
  _check_logits(cfg, tmp_path / 'w', sd)
  bf16 = tmp_path / 'bf16.pt'
  torch.save({'a': torch.ones(2, dtype=torch.bfloat16)}, str(bf16))
  read = reference_import.read_state_dict(str(bf16))
  assert read['a'].dtype == np.float32 and read['a'].tolist() == [1.0, 1.0]


class _Payload:
  """Unpickling this would create a directory: it must never happen."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


def test_pickled_code_is_never_run(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is an optional extra')
  marker = str(tmp_path / 'pwned')
  path = tmp_path / 'evil.pt'
  torch.save({'w': torch.zeros(2), 'payload': _Payload(marker)}, str(path))
  with pytest.raises(UserError, match='pickled objects other than tensors, which are refused'):
    reference_import.read_state_dict(str(path))
  assert not os.path.exists(marker)


def test_every_mismatch_is_listed():
  cfg = _config()
  m = cfg.model
  sd = reference_state_dict(m)
  del sd['sequential.3.attention.key.value_param_tokens']
  sd['sequential.2.mlp.key_param_tokens'] = sd['sequential.2.mlp.key_param_tokens'][:100]
  sd['sequential.2.attention.dense.weight'] = np.zeros((64, 64), np.float32)
  with pytest.raises(UserError) as err:
    reference_import.to_params(sd, m, VOCAB)
  message = str(err.value)
  assert '3 problems' in message
  assert 'missing sequential.3.attention.key.value_param_tokens [64, 64]' in message
  assert 'sequential.2.mlp.key_param_tokens: file [100, 64], config [256, 64]' in message
  assert 'unexpected sequential.2.attention.dense.weight [64, 64]' in message
  # a config of the wrong size: every layer's FFN is reported, with the sizes the file has
  m.n_ffn = 128
  with pytest.raises(UserError) as err:
    reference_import.to_params(reference_state_dict(_config().model), m, VOCAB)
  assert '4 problems' in str(err.value)
  assert '2 layers, vocab 512, d_model 64, n_qkv 64, n_proj 64, n_ffn 256' in str(err.value)


def test_rotary_buffers_and_tied_head_are_checked():
  m = _config().model
  sd = reference_state_dict(m)
  inv_freq = 1.0 / 10000.0 ** (np.arange(0, 4, 2) / 4)  # head dim 16, 25% rotary → 4 dims
  for i in range(m.num_layers):
    sd[f'sequential.{i + 2}.attention.rotary_emb.inv_freq'] = inv_freq.astype(np.float32)
  sd[f'sequential.{m.num_layers + 4}.word_embeddings.weight'] = sd['sequential.0.word_embeddings.weight']
  params = reference_import.to_params(sd, m, VOCAB)
  assert params['blocks/mlp/key_tokens'].shape == (2, 256, 64) and 'embedding' in params
  # a bfloat16 run of the reference saves them (with rotary_save_freqs_buffer) in bfloat16
  rounded = inv_freq.astype(ml_dtypes.bfloat16)
  assert rounded[1] != np.float32(inv_freq[1])
  sd['sequential.3.attention.rotary_emb.inv_freq'] = rounded
  assert reference_import.to_params(sd, m, VOCAB).keys() == params.keys()
  sd['sequential.3.attention.rotary_emb.inv_freq'] = (1.0 / 500000.0 ** (np.arange(0, 4, 2) / 4)).astype(
      ml_dtypes.bfloat16)   # another rotary_base
  with pytest.raises(UserError, match='sequential.3.attention.rotary_emb.inv_freq .2. differs'):
    reference_import.to_params(sd, m, VOCAB)
  sd['sequential.2.attention.rotary_emb.inv_freq'] = np.ones(2, np.float32)
  sd[f'sequential.{m.num_layers + 4}.word_embeddings.weight'] = np.zeros((VOCAB, 64), np.float32)
  with pytest.raises(UserError, match='rotary frequencies') as err:
    reference_import.to_params(sd, m, VOCAB)
  assert 'untied' in str(err.value)


def test_bad_files(tmp_path):
  cfg = _config()
  with pytest.raises(UserError, match='checkpoint file not found'):
    reference_import.convert(cfg, str(tmp_path / 'w'), str(tmp_path / 'missing.safetensors'))
  (tmp_path / 'weights.npz').write_bytes(b'x')
  with pytest.raises(UserError, match='unknown checkpoint format'):
    reference_import.convert(cfg, str(tmp_path / 'w'), str(tmp_path / 'weights.npz'))
  (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
  pytest.importorskip('safetensors')
  with pytest.raises(UserError, match='not a readable safetensors file'):
    reference_import.convert(cfg, str(tmp_path / 'w'), str(tmp_path / 'junk.safetensors'))
  assert not (tmp_path / 'w' / 'checkpoints').exists()


def test_imported_checkpoint_generates_and_evaluates_with_a_hf_tokenizer(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  cfg = _config()
  cfg.data.tokenizer = write_hf_tokenizer(tmp_path / 'tokenizer.json', vocab_size=300)
  safetensors_numpy.save_file(reference_state_dict(cfg.model), str(tmp_path / 'model.safetensors'))
  reference_import.convert(cfg, str(tmp_path / 'w'), str(tmp_path / 'model.safetensors'))
  texts = generate.run(cfg, str(tmp_path / 'w'), ['In the beginning', 'God'], 5, generate.GREEDY, seed=0)
  assert texts[0].startswith('In the beginning') and texts[1].startswith('God')
  text = 'In the beginning God created the heaven and the earth.\n'
  (tmp_path / 'eval.txt').write_text(text)
  result = evaluate.run(cfg, str(tmp_path / 'w'), str(tmp_path / 'eval.txt'))
  assert result.bytes == len(text) and result.tokens > 5 and np.isfinite(result.loss)
  with pytest.raises(UserError, match='evaluate a text file instead'):
    evaluate.run(cfg, str(tmp_path / 'w'))
  with pytest.raises(UserError, match='parameters only'):
    from tokenformer_jax.checkpoints import store
    from tokenformer_jax.runtime import sharding
    from tokenformer_jax.training import state as state_lib
    spec = state_lib.make_spec(cfg, VOCAB, sharding.make_mesh(cfg.mesh))
    store.restore(store.manager(str(tmp_path / 'w')), 0, state_lib.abstract_targets(spec))

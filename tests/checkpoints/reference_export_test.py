"""reference_export.py: a checkpoint → the reference's .safetensors; import of it gives the same parameters bit
for bit, and an independent PyTorch model with the reference's names loads it strictly and computes our
logits. The rotary buffers are exported only when asked (the reference saves them only with
rotary_save_freqs_buffer), and the file's metadata says what it is. A τ-frozen (exact-grown) model is
refused unless allowed."""
import importlib.metadata
import json
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from tests.helpers import small_config, train_small
from tokenformer_jax.checkpoints import reference_export
from tokenformer_jax.checkpoints import reference_import
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import loading
from tokenformer_jax.training import growth


@pytest.fixture(scope='module')
def trained(data_cache, tmp_path_factory):
  return train_small(tmp_path_factory.mktemp('export_src'), data_cache, steps=3)


def _header(path):
  with open(path, 'rb') as f:
    size = struct.unpack('<Q', f.read(8))[0]
    return json.loads(f.read(size))


def test_export_then_import_gives_the_same_parameters_bit_for_bit(trained, tmp_path):
  pytest.importorskip('safetensors.numpy')
  c, workdir = trained
  out = reference_export.export(c, workdir, str(tmp_path / 'model.safetensors'))
  header = _header(out)
  assert header['sequential.0.word_embeddings.weight']['shape'] == [512, 64]
  assert not [name for name in header if 'rotary_emb' in name]   # the reference's default saves none
  reference_import.convert(c, str(tmp_path / 'imported'), out)   # reads it as a released checkpoint
  before = loading.load(c, workdir).params
  after = loading.load(c, str(tmp_path / 'imported')).params
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not list(tmp_path.glob('*.tmp-*'))


@pytest.mark.slow
def test_the_reference_pytorch_model_loads_it_strictly_and_computes_our_logits(trained, tmp_path):
  torch = pytest.importorskip('torch', reason='torch is an optional extra')
  from safetensors.torch import load_file
  from tests import reference_torch
  c, workdir = trained
  out = reference_export.export(c, workdir, str(tmp_path / 'model.safetensors'))
  restored = loading.load(c, workdir)
  model = reference_torch.TokenFormer(restored.spec.model_cfg, restored.vocab_size)
  model.load_state_dict(load_file(out), strict=True)
  tokens = np.random.default_rng(3).integers(0, 512, (2, 32))
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).numpy()
  ours = np.asarray(nnx.merge(restored.graphdef, restored.params)(jnp.asarray(tokens)))
  assert np.max(np.abs(theirs - ours)) <= 1e-4 * np.max(np.abs(ours))


def test_rotary_buffers_only_when_asked_for_a_reference_that_saves_them(trained, tmp_path):
  """A reference built with rotary_save_freqs_buffer loads only a file with the buffers, one built
  without it only a file without them; convert reads both to the same parameters."""
  torch = pytest.importorskip('torch', reason='torch is an optional extra')
  from safetensors.torch import load_file
  from tests import reference_torch
  c, workdir = trained
  plain = reference_export.export(c, workdir, str(tmp_path / 'plain.safetensors'))
  buffers = reference_export.export(c, workdir, str(tmp_path / 'buffers.safetensors'), rotary_buffers=True)
  assert _header(buffers)['sequential.3.attention.rotary_emb.inv_freq']['dtype'] == 'F32'
  restored = loading.load(c, workdir)
  m, vocab = restored.spec.model_cfg, restored.vocab_size
  reference_torch.TokenFormer(m, vocab, save_rotary_buffers=True).load_state_dict(load_file(buffers),
                                                                                  strict=True)
  with pytest.raises(RuntimeError, match='Missing key.*rotary_emb.inv_freq'):
    reference_torch.TokenFormer(m, vocab, save_rotary_buffers=True).load_state_dict(load_file(plain),
                                                                                    strict=True)
  with pytest.raises(RuntimeError, match='Unexpected key.*rotary_emb.inv_freq'):
    reference_torch.TokenFormer(m, vocab).load_state_dict(load_file(buffers), strict=True)
  reference_import.convert(c, str(tmp_path / 'imported'), buffers)
  after = loading.load(c, str(tmp_path / 'imported')).params
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(after)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  del torch


def test_the_file_says_what_it_is(trained, tmp_path):
  """safetensors metadata: the model config, the tokenizer's sha256, our version, vocab and step."""
  safetensors = pytest.importorskip('safetensors')
  c, workdir = trained
  out = reference_export.export(c, workdir, str(tmp_path / 'model.safetensors'))
  with safetensors.safe_open(out, 'np') as f:
    meta = f.metadata()
  restored = loading.load(c, workdir)
  model = json.loads(meta['model_config'])
  assert model == c.model.to_dict() and model['n_ffn'] == 256
  assert meta['tokenizer_sha256'] == restored.meta['tokenizer_sha256'] and len(meta['tokenizer_sha256']) == 64
  assert meta['tokenformer_jax_version'] == importlib.metadata.version('tokenformer_jax')
  assert (meta['vocab_size'], meta['step'], meta['format']) == ('512', str(restored.step), 'pt')


def test_bfloat16_export(trained, tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  c, workdir = trained
  out = reference_export.export(c, workdir, str(tmp_path / 'model.safetensors'), dtype='bfloat16')
  assert _header(out)['sequential.0.word_embeddings.weight']['dtype'] == 'BF16'
  raw = open(out, 'rb').read()
  size = struct.unpack('<Q', raw[:8])[0]
  entry = _header(out)['sequential.0.word_embeddings.weight']
  begin, end = entry['data_offsets']
  got = np.frombuffer(raw[8 + size + begin:8 + size + end], ml_dtypes.bfloat16).reshape(entry['shape'])
  want = np.asarray(loading.load(c, workdir).params['embedding']).astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(got, want)
  del safetensors_numpy


def test_a_model_with_frozen_tau_is_refused_unless_allowed(trained, tmp_path, caplog):
  c, workdir = trained
  grown = small_config(c.data.cache_dir)
  grown.model.n_ffn = 384
  growth.grow(grown, workdir, str(tmp_path / 'grown'))
  with pytest.raises(UserError, match=r'τ frozen \(n_ref_ffn 256 ≠ n_ffn 384\).*--allow_tau_change'):
    reference_export.export(grown, str(tmp_path / 'grown'), str(tmp_path / 'g.safetensors'))
  assert not (tmp_path / 'g.safetensors').exists()
  reference_export.export(grown, str(tmp_path / 'grown'), str(tmp_path / 'g.safetensors'), allow_tau_change=True)
  assert _header(str(tmp_path / 'g.safetensors'))['sequential.2.mlp.key_param_tokens']['shape'] == [384, 64]
  assert 'the logits move by up to' in caplog.text


@pytest.mark.parametrize('name,message', [('model.bin', 'writes a .safetensors file'),
                                          ('nowhere/model.safetensors', 'no such folder')])
def test_bad_export_targets(trained, tmp_path, name, message):
  c, workdir = trained
  with pytest.raises(UserError, match=message):
    reference_export.export(c, workdir, str(tmp_path / name))

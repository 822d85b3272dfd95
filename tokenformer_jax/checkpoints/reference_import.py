"""Import of the released reference checkpoints (PyTorch, GPT-NeoX sequential naming) into ours.

  python -m tokenformer_jax.main --mode=convert --config=experiments/pile.py:150m --workdir=DIR \
      --reference_file=model.safetensors --config.data.tokenizer=tokenizer.json

Reading never runs pickled code: `.safetensors` goes through the safetensors package (raw arrays), and
`.bin` / `.pt` / `.pth` through torch.load(weights_only=True), which accepts only tensors and plain
containers. torch and safetensors are optional extras (`pip install 'tokenformer_jax[torch]'`).

Names, reference → ours, for L layers (layer i at sequential index i + 2), d = d_model, V = model vocab:
  sequential.0.word_embeddings.weight [V, d]            → embedding
  sequential.{i+2}.attention.{query,key,value,proj}.{key,value}_param_tokens [n, d]
                                                        → blocks/{query,key,value,proj}/{key,value}_tokens[i]
  sequential.{i+2}.mlp.{key,value}_param_tokens [n_ffn, d] → blocks/mlp/{key,value}_tokens[i]
  sequential.{L+3}.norm.{weight,bias} [d]               → final_norm_{scale,bias}
Also accepted, checked and dropped: rotary `...attention.rotary_emb.inv_freq` buffers, which only a
reference run with `rotary_save_freqs_buffer` saves (they must equal the config's frequencies, to the
bfloat16 rounding the reference stores them with), and a tied copy of the embedding at index L+4 (must
equal index 0). Any name missing, unexpected or of another shape is an error that lists every problem
and the sizes the file has.

The result is a params-only checkpoint at step 0 whose meta records the source file: --mode=generate and
--mode=eval read it; training cannot resume from it (it has no optimizer or data-iterator state).
"""
import os
import pickle
import re

import jax
import numpy as np
from absl import logging

from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import transformer as model_lib
from tokenformer_jax.runtime import sharding
from tokenformer_jax.runtime import workdir_lock
from tokenformer_jax.training import state as state_lib

TORCH_FILES = ('.bin', '.pt', '.pth')
_WRAPPERS = ('module', 'state_dict', 'model')   # keys that trainers nest a state dict under
_INSTALL = "pip install 'tokenformer_jax[torch]'"
# The reference saves its rotary buffers (with rotary_save_freqs_buffer) in the parameters' dtype, so
# a bfloat16 run's are rounded to 8 significant bits: within 2^-8 of the exact values, plus the float32
# computation's last bit.
INV_FREQ_RTOL = 2.0 ** -7


def _read_safetensors(path: str) -> dict:
  try:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f'reading {path} needs the safetensors package ({_INSTALL})') from e
  try:
    return load_file(path)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise UserError(f'not a readable safetensors file: {path} ({str(e)[:200]})') from e


def _read_torch(path: str) -> dict:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f'reading {path} needs torch ({_INSTALL}), or convert it to .safetensors') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as e:
    raise UserError(f'{path} holds pickled objects other than tensors, which are refused (loading with '
                    f'weights_only=True never runs pickled code); save its state dict as .safetensors '
                    f'with a script you trust. Detail: {str(e).splitlines()[0][:200]}') from e
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise UserError(f'not a readable PyTorch checkpoint: {path} ({str(e)[:200]})') from e
  while isinstance(obj, dict):
    inner = [obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)]
    if not inner or any(isinstance(v, torch.Tensor) for v in obj.values()):
      break
    obj = inner[0]
  if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
    raise UserError(f'{path} holds no state dict of tensors')
  return {k: (v.detach().float() if v.is_floating_point() else v.detach()).numpy()
          for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name → array from a .safetensors, .bin, .pt or .pth file."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise UserError(f'checkpoint file not found: {path}')
  if path.endswith('.safetensors'):
    return _read_safetensors(path)
  if path.endswith(TORCH_FILES):
    return _read_torch(path)
  raise UserError(f'unknown checkpoint format: {path} (expected .safetensors, {", ".join(TORCH_FILES)})')


def expected_names(m, vocab_size: int) -> dict[str, tuple[str, int | None, tuple]]:
  """Reference name → (our params path, layer index or None, shape) for model config m."""
  L, d = m.num_layers, m.d_model
  names = {'sequential.0.word_embeddings.weight': ('embedding', None, (vocab_size, d)),
           f'sequential.{L + 3}.norm.weight': ('final_norm_scale', None, (d,)),
           f'sequential.{L + 3}.norm.bias': ('final_norm_bias', None, (d,))}
  counts = model_lib.token_counts(m)
  for i in range(L):
    for group, layers in model_lib.TOKEN_GROUPS.items():
      for ours in layers:
        prefix = 'mlp' if ours == 'mlp' else f'attention.{ours}'   # the reference's module names
        for kind in ('key', 'value'):
          names[f'sequential.{i + 2}.{prefix}.{kind}_param_tokens'] = (f'blocks/{ours}/{kind}_tokens', i,
                                                                      (counts[group], d))
  return names


def rotary_inv_freq(m) -> np.ndarray:
  """The per-layer rotary frequencies the reference stores as `attention.rotary_emb.inv_freq`."""
  rot_dim = int(m.d_model // m.num_heads * m.rotary_pct) // 2 * 2
  return 1.0 / (m.rotary_base ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim))


def _file_sizes(state: dict) -> str:
  """What the file looks like, to help pick the matching config."""
  emb = state.get('sequential.0.word_embeddings.weight')
  layers = {int(k.split('.')[1]) for k in state if re.fullmatch(r'sequential\.\d+\.attention\..*', k)}
  parts = [f'{len(layers)} layers']
  if emb is not None and emb.ndim == 2:
    parts.append(f'vocab {emb.shape[0]}, d_model {emb.shape[1]}')
  for name, what in (('attention.query', 'n_qkv'), ('attention.proj', 'n_proj'), ('mlp', 'n_ffn')):
    arr = state.get(f'sequential.2.{name}.key_param_tokens')
    if arr is not None:
      parts.append(f'{what} {arr.shape[0]}')
  return ', '.join(parts)


def to_params(state: dict[str, np.ndarray], m, vocab_size: int) -> dict[str, np.ndarray]:
  """Flat {'blocks/query/key_tokens': [L, n, d], ...} float32 arrays, or a UserError listing every
  missing, unexpected and mis-shaped entry."""
  expected = expected_names(m, vocab_size)
  problems, layers = [], {}
  for name in sorted(set(expected) - set(state)):
    problems.append(f'missing {name} {list(expected[name][2])}')
  inv_freq = rotary_inv_freq(m)
  for name in sorted(state):
    array = np.asarray(state[name])
    if name in expected:
      path, layer, shape = expected[name]
      if array.shape != shape:
        problems.append(f'{name}: file {list(array.shape)}, config {list(shape)}')
      else:
        layers.setdefault(path, {})[layer] = array.astype(np.float32, copy=False)
    elif re.fullmatch(r'sequential\.\d+\.attention\.rotary_emb\.inv_freq', name):
      if array.shape != inv_freq.shape or not np.allclose(array.astype(np.float32), inv_freq,
                                                           rtol=INV_FREQ_RTOL, atol=0):
        problems.append(f'{name} {list(array.shape)} differs from the config\'s rotary frequencies '
                        f'(rotary_pct {m.rotary_pct}, rotary_base {m.rotary_base}: {inv_freq.size} values)')
    elif name == f'sequential.{m.num_layers + 4}.word_embeddings.weight':
      tied = state.get('sequential.0.word_embeddings.weight')
      if tied is None or array.shape != tied.shape or not np.array_equal(array, tied):
        problems.append(f'{name}: an output head different from the input embedding (untied) is not '
                        f'supported')
    else:
      problems.append(f'unexpected {name} {list(array.shape)}')
  if problems:
    raise UserError(f'the checkpoint does not match the config (num_layers {m.num_layers}, d_model '
                    f'{m.d_model}, vocab {vocab_size}, n_qkv {m.n_qkv}, n_proj {m.n_proj}, n_ffn '
                    f'{m.n_ffn}); the file has {_file_sizes(state)}. {len(problems)} problems: '
                    + '; '.join(problems))
  return {path: (by_layer[None] if None in by_layer else np.stack([by_layer[i] for i in range(m.num_layers)]))
          for path, by_layer in layers.items()}


def convert(cfg, workdir: str, reference_file: str) -> str:
  """Writes the reference checkpoint `reference_file` into `workdir` as step 0 of cfg's model."""
  config_lib.validate(cfg)
  if cfg.model.kind != 'tokenformer':
    raise UserError(f'only TokenFormer checkpoints can be imported; the config has model.kind='
                    f'{cfg.model.kind!r}')
  if not reference_file:
    raise UserError('--mode=convert needs --reference_file (a .safetensors, .bin or .pt file)')
  with workdir_lock.hold(workdir):  # no training run or other import writes here meanwhile
    return _write(cfg, workdir, reference_file)


def _write(cfg, workdir: str, checkpoint_file: str) -> str:
  existing = store.manager(workdir, create=False).all_steps()
  if existing:
    raise UserError(f'{workdir} already holds checkpoints (steps {sorted(existing)}); import into an '
                    f'empty workdir')
  vocab = config_lib.padded_vocab(cfg.model, cfg.data.vocab_size)
  flat = to_params(read_state_dict(checkpoint_file), cfg.model, vocab)
  spec = state_lib.make_spec(cfg, vocab, sharding.make_mesh(cfg.mesh))

  def place(path, abstract, target_sharding):
    array = flat[store.path_string(path)]
    assert array.shape == abstract.shape, (path, array.shape, abstract.shape)
    return jax.device_put(array, target_sharding)

  params = jax.tree_util.tree_map_with_path(place, spec.abstract['params'], spec.shardings['params'])
  meta = run_record.run_meta(cfg, vocab)
  meta['imported_from'] = os.path.abspath(os.path.expanduser(checkpoint_file))
  mngr = store.manager(workdir, create=True, compress=cfg.train.checkpoint_compression)
  store.save(mngr, 0, {'params': params}, None, meta)
  where = os.path.join(str(mngr.directory), '0')
  logging.info('imported %s (%.1fM parameters) into %s', checkpoint_file, state_lib.num_params(spec) / 1e6,
               where)
  return where

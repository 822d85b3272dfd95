"""The benchmark configs, shared by the JAX and PyTorch step benchmarks.

A config is a name from SHAPES or an experiment file with its argument ('experiments/progressive.py:354m'),
then 'section.key=value' overrides. kind='dense' turns it into the dense baseline with equal non-embedding
parameters (mlp_dim chosen so that 4d² + 2d·mlp = 2d·(3n_qkv + n_proj + n_ffn)).
"""
import ast
import importlib.util
import os

from tokenformer_jax.config import base_config, padded_vocab

# name: (layers, d_model, heads, n_qkv, n_proj, n_ffn, vocab, batch, seq)
SHAPES = {
    'tiny': (4, 128, 4, 128, 128, 512, 2048, 16, 128),     # experiments/tiny.py
    'm20': (4, 512, 8, 512, 512, 2048, 4096, 8, 256),      # 18.9M parameters
    'b': (6, 512, 8, 512, 512, 2048, 4096, 8, 256),        # 27.3M, the performance issue's config (b)
}


def _from_shape(name: str):
  L, d, h, n_qkv, n_proj, n_ffn, vocab, batch, seq = SHAPES[name]
  c = base_config()
  m = c.model
  m.num_layers, m.d_model, m.num_heads = L, d, h
  m.n_qkv, m.n_proj, m.n_ffn, m.vocab_size = n_qkv, n_proj, n_ffn, vocab
  c.data.seq_len = seq
  c.train.batch_size = batch
  return c


def _from_experiment(spec: str):
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise ValueError(f'no experiment file {path!r}')
  module_spec = importlib.util.spec_from_file_location('bench_experiment', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  c = module.get_config(arg) if arg else module.get_config()
  if not c.model.vocab_size:
    c.model.vocab_size = padded_vocab(c.model, c.data.vocab_size)
  return c


def _override(c, item: str):
  key, sep, text = item.partition('=')
  section, _, name = key.partition('.')
  if not sep or section not in c or name not in c[section]:
    raise ValueError(f'bad override {item!r}: expected section.key=value with an existing key')
  old = c[section][name]
  if isinstance(old, str):
    value = text
  else:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f'bad override {item!r}: {text!r} is not a {type(old).__name__}') from None
    if isinstance(old, float) and isinstance(value, int):
      value = float(value)
    if type(value) is not type(old):
      raise ValueError(f'bad override {item!r}: {key} is a {type(old).__name__}')
  c[section][name] = value


def make_config(name: str, kind: str, overrides=()):
  c = _from_experiment(name) if name.endswith('.py') or '.py:' in name else _from_shape(name)
  for item in overrides:
    _override(c, item)
  m = c.model
  m.kind = kind
  m.mlp_dim = 3 * m.n_qkv + m.n_proj + m.n_ffn - 2 * m.d_model
  return c


def known(name: str) -> bool:
  return name in SHAPES or name.endswith('.py') or '.py:' in name

"""Shared test helpers: loading experiment files and small configs."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name: str):
  """Imports experiments/<name>.py the way config_flags does (by path)."""
  spec = importlib.util.spec_from_file_location(f'experiments_{name}',
                                                os.path.join(ROOT, 'experiments', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory):
  """One tokenizer + token file for the whole session (vocab 512 on the KJV text)."""
  return str(tmp_path_factory.mktemp('data_cache'))


def small_config(data_cache_dir: str = ''):
  """A 2-layer TokenFormer that trains in seconds."""
  from tokenformer_jax.config import base_config
  c = base_config()
  c.model.num_layers = 2
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.n_qkv = 64
  c.model.n_proj = 64
  c.model.n_ffn = 256
  c.data.vocab_size = 512
  c.data.seq_len = 64
  c.data.cache_dir = data_cache_dir
  c.train.batch_size = 8
  c.train.steps = 20
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.eval_batches = 4
  c.train.checkpoint_every = 10
  c.train.sample_tokens = 0
  c.optimizer.lr = 3e-3
  c.optimizer.min_lr = 3e-4
  c.optimizer.warmup_frac = 0.1
  return c

"""The default: a small TokenFormer on the bundled KJV text; a few minutes on 2 CPU cores.

python -m tokenformer_jax.main --config=experiments/tiny.py --workdir=/tmp/tiny
"""
from tokenformer_jax.config import base_config
from tokenformer_jax.sweeps import product


def get_config():
  c = base_config()
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.n_qkv = 128
  c.model.n_proj = 128
  c.model.n_ffn = 512
  c.data.vocab_size = 2048
  c.data.seq_len = 128
  c.train.batch_size = 16
  c.train.steps = 600
  c.train.eval_every = 100
  c.train.checkpoint_every = 200
  c.train.sample_prompt = 'And God said'
  c.optimizer.lr = 3e-3
  c.optimizer.min_lr = 3e-4
  c.optimizer.warmup_frac = 0.05
  return c


def get_sweep():
  """python launch/sweep.py --config=experiments/tiny.py --root=/tmp/tiny_sweep"""
  return product(('optimizer.lr', [1e-3, 3e-3]), ('model.n_ffn', [256, 512]))

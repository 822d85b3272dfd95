"""Test helpers in one module: the small config (in process and as --config.* flags), the command line
as a user runs it, and builders of files the tests damage or import."""
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'experiments', 'tiny.py')
def run_main(*args, workdir, config=TINY, timeout=300):
  """python -m tokenformer_jax.main --config=CONFIG --workdir=WORKDIR ARGS: (status, stdout, stderr)."""
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', f'--config={config}',
                         f'--workdir={workdir}', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)
  return proc.returncode, proc.stdout, proc.stderr


def tree_digest(path):
  """A hash of every file's path and bytes under `path`: equal digests mean nothing was touched."""
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(full.encode())
      with open(full, 'rb') as f:
        digest.update(f.read())
  return digest.hexdigest()


def damage_array_bytes(step_dir, name: str = 'params/embedding', n_bytes: int = 4096, seed: int = 0) -> str:
  """Random bytes over part of one saved array, overwritten in place where its data lies in the
  checkpoint's data files (no file changes size): what a bad disk or a stray write leaves, and no
  truncation or metadata check sees. The array must be stored uncompressed (training saves so).
  Returns the file."""
  import random
  import warnings
  import orbax.checkpoint as ocp
  state_dir = os.path.join(str(step_dir), 'state')
  with warnings.catch_warnings():   # 'sharding info not provided': read as saved, on this host
    warnings.simplefilter('ignore')
    tree = ocp.PyTreeCheckpointer().restore(state_dir)
  for key in name.split('/'):
    tree = tree[key]
  raw = np.asarray(tree).tobytes()
  assert len(raw) >= 2 * n_bytes, (name, len(raw))
  for folder, _, files in sorted(os.walk(state_dir)):
    for file_name in sorted(files):
      path = os.path.join(folder, file_name)
      with open(path, 'rb') as f:
        at = f.read().find(raw)
      if at >= 0:
        with open(path, 'r+b') as f:
          f.seek(at + len(raw) // 2 - n_bytes // 2)
          f.write(random.Random(seed).randbytes(n_bytes))
        return path
  raise AssertionError(f'{name} is not stored as one run of bytes under {state_dir}')


def error_line(stderr):
  """The one 'error: ...' line (interpreter shutdown may print after it); else the last line."""
  lines = [line for line in stderr.strip().splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith('error: ')]
  return errors[-1] if errors else lines[-1]


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


def fast_config(data_cache_dir: str = ''):
  """small_config cut to one layer and two steps: enough to write a checkpoint the refusal tests can guard."""
  c = small_config(data_cache_dir)
  c.model.num_layers = 1
  c.model.d_model = 32
  c.model.num_heads = 2
  c.model.n_qkv = 32
  c.model.n_proj = 32
  c.model.n_ffn = 64
  c.data.seq_len = 32
  c.train.batch_size = 4
  c.train.steps = 2
  c.train.eval_every = 2
  c.train.eval_batches = 1
  c.train.checkpoint_every = 2
  c.train.sample_tokens = 4
  return c


def config_flags(c, keys) -> list[str]:
  """`keys` (dotted) of config c as --config.KEY=VALUE flags: c as the command line states it."""
  flags = []
  for key in keys:
    value = c
    for part in key.split('.'):
      value = value[part]
    flags.append(f'--config.{key}={value}')
  return flags


# What the command-line tests lay over experiments/tiny.py (TINY): fast_config's sizes and schedule, so
# in-process and command-line tests train the same small model.
FAST_KEYS = ('model.num_layers', 'model.d_model', 'model.num_heads', 'model.n_qkv', 'model.n_proj',
             'model.n_ffn', 'data.vocab_size', 'data.seq_len', 'train.batch_size', 'train.steps',
             'train.eval_every', 'train.eval_batches', 'train.checkpoint_every', 'train.sample_tokens')
FAST = config_flags(fast_config(), FAST_KEYS)


def train_small(workdir, data_cache_dir: str, **train_overrides):
  """small_config trained in `workdir` (train.* keys overridden); returns (config, workdir as str)."""
  from tokenformer_jax.training import loop
  c = small_config(data_cache_dir)
  for key, value in train_overrides.items():
    c.train[key] = value
  loop.train(c, str(workdir))
  return c, str(workdir)


def cpu_model(m):
  """Model config m resolved for the CPU the tests run on (config.resolve_model)."""
  from tokenformer_jax.config import resolve_model
  return resolve_model(m, 'cpu')


def write_hf_tokenizer(path, vocab_size: int = 300) -> str:
  """A small byte-level BPE with <|endoftext|>, saved as tokenizer.json (the GPT-NeoX-20B format)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<|endoftext|>'],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  text = ('In the beginning God created the heaven and the earth.\n'
          'And the earth was without form, and void; and darkness was upon the face of the deep.\n'
          'And the Spirit of God moved upon the face of the waters.\n')
  tok.train_from_iterator(text.splitlines() * 4, trainer)
  tok.save(str(path))
  return str(path)


def reference_state_dict(m, vocab=512, seed=0):
  """Random weights under the released checkpoints' names and shapes (written from REFERENCE.md)."""
  rng = np.random.default_rng(seed)
  L, d = m.num_layers, m.d_model
  normal = lambda shape, std: (std * rng.standard_normal(shape)).astype(np.float32)
  sd = {'sequential.0.word_embeddings.weight': normal((vocab, d), 0.1),
        f'sequential.{L + 3}.norm.weight': 1.0 + normal((d,), 0.1),
        f'sequential.{L + 3}.norm.bias': normal((d,), 0.1)}
  for i in range(L):
    for name, n in (('attention.query', m.n_qkv), ('attention.key', m.n_qkv), ('attention.value', m.n_qkv),
                    ('attention.proj', m.n_proj), ('mlp', m.n_ffn)):
      sd[f'sequential.{i + 2}.{name}.key_param_tokens'] = normal((n, d), 0.5)
      sd[f'sequential.{i + 2}.{name}.value_param_tokens'] = normal((n, d), 0.2)
  return sd


def script_module(path: str):
  """A script of the checkout (benchmarks/, studies/) as a module, loaded by its path: the scripts are not
  a package, and a test does not put their folder on everyone's sys.path."""
  path = os.path.join(ROOT, path)
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def finish(procs, timeout=600):
  """Each process's stderr once all have exited (any left running after `timeout` are killed)."""
  try:
    return [p.communicate(timeout=timeout)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()

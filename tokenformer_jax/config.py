"""The base experiment config, its validation, the experiment loader, and the per-platform choices.

Experiment files under experiments/ start from `base_config()` and change what they need; `main.py` loads
them with `config_flags` (lock_config=True, so a misspelt override is an error), and every other tool with
`load_experiment`, which follows the same rules. `validate` checks values that a type check cannot
(divisibility, positivity) and raises `UserError` naming the key. `resolve_model` is the one place where
a model config's per-platform defaults are filled in.
"""
import importlib.util
import os

import ml_collections

from tokenformer_jax.errors import UserError
from tokenformer_jax.model import attention
from tokenformer_jax.telemetry import profiling

MODEL_KINDS = ('tokenformer', 'dense')
REMAT_POLICIES = ('none', 'block', 'save_matmuls')
DTYPES = ('float32', 'bfloat16')
GROWTH_POLICIES = ('exact', 'paper')
GROWTH_OPTIMIZER = ('carry', 'reset')
DEPTH_PLACEMENTS = ('append', 'interleave')   # where a growth puts new blocks (growth_layout.placement)
# Exact GELU as u·Φ(u) with erf (pattention.py's own, with a backward that reuses the forward's output)
# or jax.nn.gelu's erfc form: the same function, different kernels.
GELU_IMPLEMENTATIONS = ('erf', 'erfc')
WANDB_MODES = ('online', 'offline')


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = _model()
  c.data = _data()
  c.train = _train()
  # How text is sampled (generate.py): --mode=generate (whose flags of these names override them) and the
  # sample at the end of a training run (which draws train.sample_tokens with the run's seed).
  c.sampling = _sampling()
  # Where metrics go besides WORKDIR/metrics.jsonl and WORKDIR/tensorboard/.
  c.metrics = _metrics()
  c.optimizer = _optimizer()
  # Growth: how `--mode=grow` (and each stage of a multi-stage schedule) makes a model deeper, wider
  # and adds parameter tokens (run_record.GROWTH_RULES says which model keys may change, and how).
  c.growth = _growth()
  # Multi-stage schedule: override dicts, one per stage ({'model.n_ffn': 1024, 'train.steps': 600}, ...),
  # each applied to this config (stages.py). Empty: a single training run.
  c.stages = ()

  c.mesh = _mesh()
  # logical axis → mesh axes; the parameter-token axis is really sharded (over `tensor`).
  c.sharding_rules = (
      ('batch', ('data', 'fsdp')),
      ('param_tokens', 'tensor'),
      ('embed', 'fsdp'),
      ('vocab', 'tensor'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('layers', None),
      ('norm', None),
  )
  return c


def _model() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.kind = 'tokenformer'         # or 'dense': the Transformer baseline with linear projections
  m.vocab_size = 0               # 0: the tokenizer's size; always padded up to a multiple of 128
  m.num_layers = 2
  m.d_model = 128
  m.num_heads = 4
  m.n_qkv = 128                  # parameter tokens of each of the q, k, v Pattentions
  m.n_proj = 128                 # ... of the attention output Pattention
  m.n_ffn = 512                  # ... of the FFN Pattention
  m.n_ref_qkv = 0                # > 0: freeze τ = √n_ref (function-preserving growth); 0: τ = √n
  m.n_ref_proj = 0
  m.n_ref_ffn = 0
  m.mlp_dim = 0                  # dense baseline MLP width; 0: 4·d_model
  m.rotary_pct = 0.25
  m.rotary_base = 10000.0
  m.ln_eps = 1e-5
  m.key_init_std = 0.02
  m.value_init_std = 0.0         # 0: the reference's 2 / (L·√d)
  m.embed_init_std = 0.02
  m.dtype = 'float32'            # compute dtype; parameters stay float32
  m.remat = 'none'               # none | block | save_matmuls
  m.scan_unroll = 0              # layers per scan iteration; 0: per platform (all on CPU, 1 elsewhere)
  m.attention_impl = ''          # '' per platform, or one of attention.IMPLEMENTATIONS
  m.gelu_impl = ''               # '' per platform, or one of GELU_IMPLEMENTATIONS (same function)
  return m


def _data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.prepared = ''                # a dataset made by `python -m tokenformer_jax.prepare` (then corpus,
                                 # tokenizer, vocab_size, val_fraction, text_key are its own)
  d.mixture = ''                 # or several: 'DIR1:WEIGHT,DIR2:WEIGHT' (validation: DIR1's)
  d.validation = ''              # a prepared dataset (same tokenizer) evaluated, all of it, instead of
                                 # the training data's validation split
  # Raw text instead, prepared in-process into cache_dir on first use (the same format):
  d.corpus = 'kjv'               # 'kjv' (ships with the install) or comma-separated files / globs
  d.tokenizer = ''               # a sentencepiece .model or a tokenizer.json; '' trains a BPE
  d.vocab_size = 2048            # the BPE's size when training one
  d.val_fraction = 0.05          # documents held out for validation
  d.text_key = 'text'            # the text field of JSON Lines / Parquet inputs
  d.cache_dir = ''               # '' → WORKDIR/data
  d.seq_len = 128
  return d


def _train() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.batch_size = 16              # global, per optimizer step
  t.grad_accum = 1               # micro-batches per step (batch_size must divide evenly)
  t.steps = 1000
  t.log_every = 10
  t.eval_every = 200
  t.eval_batches = 8
  t.checkpoint_every = 200
  t.keep_checkpoints = 3
  t.async_checkpointing = True   # arrays written in the background while training goes on
  t.checkpoint_compression = False  # zstd on every checkpoint: float32 barely compresses, for more host CPU
  t.sample_tokens = 64           # tokens sampled at the end of a run (0: none) ...
  t.sample_prompt = ''           # ... continuing this text ('': a new document), with sampling.*
  t.peak_tflops = 0.0            # per-chip peak for the logged MFU; 0: the datasheet's (chips.py), if known
  t.profile_steps = (0, 0)       # (START, COUNT): trace steps START..START+COUNT-1 (COUNT 0: off)
  t.profile_every = 0            # > 0: trace such a window again every N steps
  t.profile_all_hosts = False    # trace on every process (WORKDIR/profile/process_<i>/), not only on 0
  t.profiler_port = 0            # > 0: the on-demand profiler server's port (profiling.py)
  return t


def _sampling() -> ml_collections.ConfigDict:
  sm = ml_collections.ConfigDict()
  sm.max_new_tokens = 64         # per prompt (--mode=generate)
  sm.temperature = 0.8           # 0: greedy
  sm.top_k = 40                  # sample among the k most likely ids (0: all)
  sm.top_p = 1.0                 # ... within the top-p probability mass (1: all)
  sm.seed = 0                    # --mode=generate's sampler seed (--sample_seed)
  return sm


def _metrics() -> ml_collections.ConfigDict:
  mt = ml_collections.ConfigDict()
  mt.wandb_project = ''          # a Weights & Biases project: log there too (pip install '.[wandb]')
  mt.wandb_entity = ''
  mt.wandb_name = ''             # '': the workdir's name
  mt.wandb_mode = 'online'       # or 'offline': files under WORKDIR/wandb/, `wandb sync` uploads them
  return mt


def _optimizer() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.lr = 1e-3
  o.min_lr = 1e-4
  o.warmup_frac = 0.01
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1
  o.clip_norm = 1.0
  return o


def _growth() -> ml_collections.ConfigDict:
  g = ml_collections.ConfigDict()
  g.policy = 'exact'             # exact: new keys 0, new values random, τ frozen; paper: all random, τ = √n
  g.optimizer = 'carry'          # carry: Adam moments kept (mapped onto the grown layout, 0 for what is
                                 # new), step and schedule go on; reset: fresh moments, step 0, a new
                                 # warmup + cosine over the stage
  g.freeze_old = False           # train only what is new (new tokens, blocks and width copies)
  g.seed = 1                     # for the new tokens' and blocks' random values and the width noise
  g.depth_placement = 'append'   # new blocks after the old ones, or 'interleave'd between them
  g.width_noise = 0.1            # std of the noise on split copies (width growth), × the table's init std
  return g


def _mesh() -> ml_collections.ConfigDict:
  mesh = ml_collections.ConfigDict()
  mesh.data = -1                 # per-slice (ICI) sizes; -1 takes the devices left over
  mesh.fsdp = 1
  mesh.tensor = 1
  mesh.dcn_data = 1              # across-slice (DCN) sizes
  mesh.dcn_fsdp = 1
  mesh.dcn_tensor = 1
  return mesh


def padded_vocab(cfg_model, tokenizer_vocab: int) -> int:
  """Model vocab: the configured size (or the tokenizer's) rounded up to a multiple of 128."""
  size = cfg_model.vocab_size or tokenizer_vocab
  if size < tokenizer_vocab:
    raise UserError(f'model.vocab_size={size} is smaller than the tokenizer vocab ({tokenizer_vocab})')
  return -(-size // 128) * 128


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises UserError for values no run could use; the message names the key."""
  m, t, d, o = cfg.model, cfg.train, cfg.data, cfg.optimizer

  def positive(section, name, value):
    if value <= 0:
      raise UserError(f'{section}.{name} must be positive, got {value}')

  if m.kind not in MODEL_KINDS:
    raise UserError(f'model.kind must be one of {MODEL_KINDS}, got {m.kind!r}')
  for name in ('num_layers', 'd_model', 'num_heads', 'n_qkv', 'n_proj', 'n_ffn'):
    positive('model', name, m[name])
  for name in ('n_ref_qkv', 'n_ref_proj', 'n_ref_ffn', 'mlp_dim', 'vocab_size'):
    if m[name] < 0:
      raise UserError(f'model.{name} must be >= 0, got {m[name]}')
  if m.d_model % m.num_heads:
    raise UserError(f'model.num_heads={m.num_heads} does not divide model.d_model={m.d_model}')
  if (m.d_model // m.num_heads) % 2:
    raise UserError(f'head dim d_model/num_heads={m.d_model // m.num_heads} must be even (rotary)')
  if not 0.0 <= m.rotary_pct <= 1.0:
    raise UserError(f'model.rotary_pct must be in [0, 1], got {m.rotary_pct}')
  if m.scan_unroll < 0:
    raise UserError(f'model.scan_unroll must be >= 0, got {m.scan_unroll}')
  if m.remat not in REMAT_POLICIES:
    raise UserError(f'model.remat must be one of {REMAT_POLICIES}, got {m.remat!r}')
  if m.dtype not in DTYPES:
    raise UserError(f'model.dtype must be one of {DTYPES}, got {m.dtype!r}')
  if m.gelu_impl not in ('',) + GELU_IMPLEMENTATIONS:
    raise UserError(f'model.gelu_impl must be one of {("",) + GELU_IMPLEMENTATIONS}, got {m.gelu_impl!r}')
  if m.attention_impl not in attention.IMPLEMENTATIONS:
    raise UserError(f'model.attention_impl must be one of {attention.IMPLEMENTATIONS}, '
                    f'got {m.attention_impl!r}')
  for name in ('seq_len', 'vocab_size'):
    positive('data', name, d[name])
  if m.attention_impl.startswith('splash') and d.seq_len % attention.SPLASH_BLOCK:
    raise UserError(f'model.attention_impl={m.attention_impl} needs data.seq_len divisible by '
                    f'{attention.SPLASH_BLOCK}, got {d.seq_len}')
  for name in ('batch_size', 'grad_accum', 'steps', 'log_every', 'eval_every', 'eval_batches',
               'checkpoint_every', 'keep_checkpoints'):
    positive('train', name, t[name])
  if t.batch_size % t.grad_accum:
    raise UserError(f'train.grad_accum={t.grad_accum} does not divide train.batch_size={t.batch_size}')
  positive('optimizer', 'lr', o.lr)
  if cfg.growth.policy not in GROWTH_POLICIES:
    raise UserError(f'growth.policy must be one of {GROWTH_POLICIES}, got {cfg.growth.policy!r}')
  if cfg.growth.optimizer not in GROWTH_OPTIMIZER:
    raise UserError(f'growth.optimizer must be one of {GROWTH_OPTIMIZER}, got {cfg.growth.optimizer!r}')
  if cfg.growth.depth_placement not in DEPTH_PLACEMENTS:
    raise UserError(f'growth.depth_placement must be one of {DEPTH_PLACEMENTS}, '
                    f'got {cfg.growth.depth_placement!r}')
  if cfg.growth.width_noise < 0:
    raise UserError(f'growth.width_noise must be >= 0, got {cfg.growth.width_noise}')
  for i, stage in enumerate(cfg.stages):
    if not isinstance(stage, dict) or not stage:
      raise UserError(f'stages[{i}] must be a non-empty dict of overrides '
                      f'({{"model.n_ffn": 1024, ...}}), got {stage!r}')
    if 'stages' in stage:
      raise UserError(f'stages[{i}] may not set stages')
  if t.peak_tflops < 0:
    raise UserError(f'train.peak_tflops must be >= 0 (0: the datasheet peak), got {t.peak_tflops}')
  profiling.check(t)
  if cfg.metrics.wandb_mode not in WANDB_MODES:
    raise UserError(f'metrics.wandb_mode must be one of {WANDB_MODES}, got {cfg.metrics.wandb_mode!r}')
  if not 0.0 <= o.warmup_frac < 1.0:
    raise UserError(f'optimizer.warmup_frac must be in [0, 1), got {o.warmup_frac}')


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of cfg with {'section.key': value} applied (a sweep point, a stage); an unknown key or a value
  of the wrong type is a UserError naming it."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  out.lock()
  for key, value in overrides.items():
    try:   # one key at a time, so that an error names the key
      out.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError) as e:
      raise UserError(f'override {key}={value!r}: no such config key') from e
    except (TypeError, ValueError) as e:
      raise UserError(f'override {key}={value!r}: {e}') from e
  return out


def from_flag(config_flag) -> ml_collections.ConfigDict:
  """The config of a config_flags --config flag holder; a missing flag or a file that failed to load is
  a UserError (config_flags defers a load failure to the first access)."""
  try:
    cfg = config_flag.value
    if cfg is None:
      raise UserError('--config is required (e.g. --config=experiments/tiny.py)')
    cfg.to_dict()
  except (OSError, ValueError) as e:
    raise UserError(f'cannot load --config: {e}') from e
  return cfg


def experiment_module(path: str):
  """An experiment file as a module, loaded by path as config_flags loads --config."""
  if not os.path.isfile(path):
    raise UserError(f'no experiment file {path}')
  spec = importlib.util.spec_from_file_location(
      'experiment_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def experiment_beside(file: str, name: str):
  """The file `name` ('tiny.py', '../cpu_training.py') relative to the folder of `file` (the caller's
  __file__), loaded by path as experiment_module does: experiment files share settings by path, not as an
  installed package, so they load the same from any current directory."""
  return experiment_module(os.path.join(os.path.dirname(os.path.abspath(file)), name))


def load_experiment(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """'experiments/tiny.py' or 'experiments/pile.py:150m' (get_config's argument after the colon), with
  overrides; locked, as main.py's --config. What main.py would train, for tools and tests."""
  path, _, arg = spec.partition(':')
  module = experiment_module(path)
  try:
    cfg = module.get_config(arg) if arg else module.get_config()
  except ValueError as e:   # an experiment's unknown argument
    raise UserError(f'{spec}: {e}') from e
  cfg.lock()
  return apply_overrides(cfg, overrides or {})


def resolve_model(m: ml_collections.ConfigDict, platform: str,
                  seq_len: int | None = None) -> ml_collections.ConfigDict:
  """A copy of the model config with every per-platform default filled in, for the platform the model
  will run on (the mesh's, which for an AOT compile is not this process's backend):
  - attention_impl '' → attention.default_impl (which may look at the training seq_len); splash off a
    TPU runs in the Pallas interpreter (splash_interpret).
  - gelu_impl '' → erf on CPU, whose kernel is faster there; erfc elsewhere, which the TPU compiler
    keeps in less memory.
  - scan_unroll 0 → all layers on CPU (the unrolled loop saves the stacked residual copies there), 1
    elsewhere.
  (The measurements behind each choice: docs/model.md's table of platform defaults.)
  """
  m = ml_collections.ConfigDict(m.to_dict())
  if not m.attention_impl:
    m.attention_impl = attention.default_impl(m.dtype, platform, seq_len)
  if m.attention_impl == 'splash' and platform != 'tpu':
    m.attention_impl = 'splash_interpret'
  if not m.gelu_impl:
    m.gelu_impl = 'erf' if platform == 'cpu' else 'erfc'
  if not m.scan_unroll:
    m.scan_unroll = m.num_layers if platform == 'cpu' else 1
  return m

"""The run record: what a checkpoint records of the run that wrote it, and what a later run may change.

Every key of config.base_config() has one role in ROLES (run_record_test fails on a key without one):
- MODEL: defines the function the parameters compute. Resume, --init_from, generate/eval and export
  refuse another value (model_differences); a growth may change the keys GROWTH_RULES names, as its
  rule says, and no other. A key the checkpoint predates counts as its base_config default;
  model.vocab_size is compared by the padded vocabulary it resolves to (resolved_vocab).
- ADOPTED: the frozen-τ counts (model.n_ref_*), a property of the trained model that growth settles: a
  config that leaves them 0 takes the checkpoint's (adopt_frozen_tau), so the config a grown run was
  started with resumes, samples and evaluates it; an explicit other value is refused as a MODEL key is.
- INIT: how fresh parameters are drawn (growth draws its new rows with them): free once trained.
- RUNTIME: how the same function is computed or the same run carried out (dtype, remat, kernels, mesh,
  sharding, how checkpoints are written): free, not part of what a checkpoint is.
- DATA: the stream of windows whose global batches the checkpoint's data position counts: the seed,
  the window length, the global batch and the data (a prepared dataset or mixture); RAW_DATA the same for
  a raw corpus only (a prepared dataset carries its own split and text field). A resume that changes one
  would apply the old position to another stream (or, with a larger validation split, validate on
  trained-on text), so it is refused with the keys named, unless the user accepts it: then the data
  iterator starts again at the beginning of the new stream, and the run says so.
- TOKENIZER: what makes a raw corpus's tokenizer (data.tokenizer, data.vocab_size): not compared as
  keys; the tokenizer itself is, by the sha256 the record holds (check_tokenizer), always and never
  accepted: its ids would mean other pieces.
- LOGGED: the optimizer and the schedule: free, each change logged on resume.
- FREE: what the run logs, evaluates, samples and profiles, where it caches data, and the settings of
  the next growth and of a schedule (read by growth and stages, not by a resume).

One reconcile per purpose takes the record (a checkpoint's meta) and a config, and returns the config to
run with or raises UserError: for_resume, for_init (--init_from), for_growth (--mode=grow and a stage's
growth), for_stage (a schedule's stages, before any trains), for_inference (with inference_tokenizer once
the tokenizer is known) and for_export.
"""
from typing import Any

import ml_collections
from absl import logging

from tokenformer_jax import config as config_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.model import transformer as model_lib

MODEL, ADOPTED, INIT, RUNTIME = 'model', 'adopted', 'init', 'runtime'
DATA, RAW_DATA, TOKENIZER, LOGGED, FREE = 'data', 'raw_data', 'tokenizer', 'logged', 'free'

_GROUPS = model_lib.TOKEN_GROUPS
# Model keys growth sets: τ frozen at the count before growth.
N_REF_KEYS = tuple(f'n_ref_{group}' for group in _GROUPS)


def _in(section: str, *names: str) -> tuple[str, ...]:
  return tuple(f'{section}.{name}' for name in names)


# Every key of base_config, flattened ('model.d_model', 'seed'), and its role (see the docstring). The
# order of DATA and RAW_DATA keys is the order a refusal names them in.
ROLES = {
    **dict.fromkeys(_in('model', 'kind', 'vocab_size', 'num_layers', 'd_model', 'num_heads',
                        *(f'n_{group}' for group in _GROUPS), 'mlp_dim', 'rotary_pct', 'rotary_base',
                        'ln_eps'), MODEL),
    **dict.fromkeys(_in('model', *N_REF_KEYS), ADOPTED),
    **dict.fromkeys(_in('model', 'key_init_std', 'value_init_std', 'embed_init_std'), INIT),
    **dict.fromkeys(_in('model', 'dtype', 'remat', 'scan_unroll', 'attention_impl', 'gelu_impl')
                    + _in('mesh', 'data', 'fsdp', 'tensor', 'dcn_data', 'dcn_fsdp', 'dcn_tensor')
                    + ('sharding_rules',)
                    + _in('train', 'async_checkpointing', 'checkpoint_compression'), RUNTIME),
    **dict.fromkeys(('seed', 'data.seq_len', 'train.batch_size', 'data.prepared', 'data.mixture'), DATA),
    **dict.fromkeys(_in('data', 'corpus', 'val_fraction', 'text_key'), RAW_DATA),
    **dict.fromkeys(_in('data', 'tokenizer', 'vocab_size'), TOKENIZER),
    **dict.fromkeys(_in('optimizer', 'lr', 'min_lr', 'warmup_frac', 'b1', 'b2', 'eps', 'weight_decay',
                        'clip_norm') + _in('train', 'steps', 'grad_accum'), LOGGED),
    **dict.fromkeys(_in('data', 'validation', 'cache_dir')
                    + _in('train', 'log_every', 'eval_every', 'eval_batches', 'checkpoint_every',
                          'keep_checkpoints', 'sample_tokens', 'sample_prompt', 'peak_tflops',
                          'profile_steps', 'profile_every', 'profile_all_hosts', 'profiler_port')
                    + _in('sampling', 'max_new_tokens', 'temperature', 'top_k', 'top_p', 'seed')
                    + _in('metrics', 'wandb_project', 'wandb_entity', 'wandb_name', 'wandb_mode')
                    + _in('growth', 'policy', 'optimizer', 'freeze_old', 'seed', 'depth_placement',
                          'width_noise')
                    + ('stages',), FREE),
}
# The model keys a growth (--mode=grow, a stage) may change, and how; every other MODEL or ADOPTED key
# must stay (model_differences). 'more': at least the checkpoint's. 'width': d_model times an integer
# k ≥ 1. 'heads': num_heads times the same k (heads keep their size). 'mlp': the dense MLP's width
# (mlp_dim, 0 meaning 4·d_model) at least k times the checkpoint's. 'settled': set by the growth policy
# (frozen τ, for_growth), not by the config.
GROWTH_RULES = {'num_layers': 'more', 'd_model': 'width', 'num_heads': 'heads', 'mlp_dim': 'mlp',
                **{f'n_{group}': 'more' for group in _GROUPS},
                **{key: 'settled' for key in N_REF_KEYS}}
# What a raw corpus's prepared copy (its manifest's request) was made from, by the config keys that say
# it: a run whose config says otherwise is refused, the copy never rebuilt silently (data/dataset.py).
PREPARED_FROM = {'inputs': 'data.corpus', 'fingerprint': 'the corpus files (names, sizes or times)',
                 'files': 'the number of corpus files',
                 'tokenizer': 'the tokenizer (data.tokenizer or data.vocab_size)',
                 'text_key': 'data.text_key', 'validation_fraction': 'data.val_fraction'}
# What the record says of the tokenizer (run_meta), kept by a checkpoint made from another (growth).
TOKENIZER_META = ('tokenizer_sha256', 'tokenizer_vocab_size')
# Where the weights came from: kept in the record of every later checkpoint of the run.
PROVENANCE = ('grown_from', 'initialized_from')


def flat_keys(tree: dict, prefix: str = '') -> list[str]:
  """'model.d_model', 'seed', ...: the keys of a config as a dict, its sections flattened."""
  keys = []
  for key, value in tree.items():
    keys += flat_keys(value, f'{prefix}{key}.') if isinstance(value, dict) else [prefix + key]
  return keys


def keys_of(*roles: str) -> tuple[str, ...]:
  return tuple(key for key, role in ROLES.items() if role in roles)


def run_meta(cfg, vocab_size: int, tokenizer=None) -> dict:
  """What is saved beside the arrays: the config (as JSON), the model's padded vocab size and the
  sha256 and size of the tokenizer whose ids it was trained on (the size says what model.vocab_size=0
  means for this checkpoint, see resolved_vocab)."""
  meta = {'config': cfg.to_dict(), 'vocab_size': vocab_size}
  if tokenizer is not None:
    meta['tokenizer_sha256'] = tokenizer.sha256
    meta['tokenizer_vocab_size'] = tokenizer.vocab_size
  return meta


def check_tokenizer(record: dict | None, sha256: str, step: int | None = None,
                    where: str | None = None) -> None:
  """Refuses token ids of a tokenizer (by its sha256) other than the one the record names, if it names
  one: this run's tokenizer, or (`where`) that of the data in that folder."""
  saved = (record or {}).get('tokenizer_sha256')
  if not saved or saved == sha256:
    return
  which = f'checkpoint step {step}' if step is not None else 'the checkpoint'
  whose = f'the data in {where} has tokenizer' if where is not None else 'this run\'s tokenizer is'
  raise UserError(f'{which} was trained with tokenizer sha256 {saved}, but {whose} sha256 {sha256}: its '
                  f'ids mean other pieces')


def _get(tree: dict, dotted: str):
  for part in dotted.split('.'):
    tree = tree[part]
  return tree


def _saved(saved: dict, key: str):
  """The saved value, or base_config's default where the checkpoint predates the key."""
  try:
    return _get(saved, key)
  except KeyError:
    return _get(config_lib.base_config().to_dict(), key)


def _raw(config: dict) -> bool:
  return not config['data'].get('prepared') and not config['data'].get('mixture')


def differences(saved: dict, now: dict, keys) -> list[str]:
  return [f'{key}: checkpoint {_saved(saved, key)!r}, now {_get(now, key)!r}' for key in keys
          if _saved(saved, key) != _get(now, key)]


def adopt_frozen_tau(cfg, saved_meta: dict) -> ml_collections.ConfigDict:
  """A copy of cfg that takes the checkpoint's frozen-τ counts (the ADOPTED keys) where cfg leaves them
  at 0; an explicit, different value is still refused (model_differences)."""
  saved_model = saved_meta['config'].get('model', {})
  out = ml_collections.ConfigDict(cfg.to_dict())
  for key in N_REF_KEYS:
    if not out.model[key] and saved_model.get(key):
      out.model[key] = saved_model[key]
  out.lock()
  return out


def resolved_vocab(m, saved_meta: dict) -> int | None:
  """The padded vocabulary that model config m means with the checkpoint's tokenizer
  (config.padded_vocab): an explicit model.vocab_size rounded up to 128, 0 the tokenizer's size rounded
  up. None where m leaves it to the tokenizer and the checkpoint does not say what that came to (one
  saved before run_meta recorded the tokenizer's size, with an explicit model.vocab_size)."""
  tokenizer_vocab = saved_meta.get('tokenizer_vocab_size')
  if m.vocab_size or tokenizer_vocab is not None:
    return config_lib.padded_vocab(m, tokenizer_vocab or 0)
  if not saved_meta['config'].get('model', {}).get('vocab_size'):
    return saved_meta['vocab_size']     # 0 then and now: the same tokenizer's size (sha256-checked)
  return None


def model_differences(saved_model: dict, m, ignore: tuple = (), saved_meta: dict | None = None) -> list[str]:
  """'model.KEY: checkpoint OLD, config NEW' for every MODEL or ADOPTED key of m that differs, but those
  in `ignore`. A key the checkpoint's config lacks (saved before the key existed) counts as its
  base_config default. Given the checkpoint's `saved_meta`, model.vocab_size is compared by what it
  resolves to (resolved_vocab) against the padded vocabulary the checkpoint was built with, so 0 and the
  size it stands for are the same model."""
  defaults = config_lib.base_config().model
  diffs = []
  for key in m.keys():
    if ROLES.get(f'model.{key}', MODEL) not in (MODEL, ADOPTED) or key in ignore:
      continue
    old = saved_model.get(key, defaults.get(key))
    if key == 'vocab_size' and saved_meta is not None:
      now = resolved_vocab(m, saved_meta)
      if now == saved_meta['vocab_size']:
        continue
      if now is not None:
        diffs.append(f'model.{key}: checkpoint {old!r}, config {m[key]!r} (padded vocab: checkpoint '
                     f'{saved_meta["vocab_size"]}, config {now})')
        continue
    if old != m[key]:
      diffs.append(f'model.{key}: checkpoint {old!r}, config {m[key]!r}')
  return diffs


def growth_differences(saved_model: dict, m, saved_meta: dict | None = None) -> list[str]:
  """Every way config m is not a growth of the checkpoint's model (GROWTH_RULES): model_differences
  over the keys a growth may not change, then each rule; 'model.KEY: checkpoint OLD, config NEW: why'."""
  defaults = config_lib.base_config().model
  diffs = model_differences(saved_model, m, ignore=tuple(GROWTH_RULES), saved_meta=saved_meta)
  old = {key: saved_model.get(key, defaults.get(key)) for key in GROWTH_RULES}
  width, remainder = divmod(m.d_model, old['d_model'])
  mlp_old, mlp_new = old['mlp_dim'] or 4 * old['d_model'], m.mlp_dim or 4 * m.d_model
  for key, rule in GROWTH_RULES.items():
    why = None
    if rule == 'more' and m[key] < old[key]:
      why = 'a growth cannot make it smaller'
    elif rule == 'width' and (remainder or width < 1):
      why = 'width grows by an integer factor'
    elif rule == 'heads' and not remainder and width >= 1 and m[key] != width * old[key]:
      why = (f'heads keep their size (d_model/num_heads = {old["d_model"] // old[key]}), so with d_model '
             f'×{width} num_heads must be {width * old[key]}')
    elif rule == 'mlp' and m.kind == 'dense' and not remainder and width >= 1 and mlp_new < width * mlp_old:
      why = f'the MLP width (mlp_dim, 0: 4·d_model) must be at least ×{width} the checkpoint\'s {mlp_old}'
    if why:
      diffs.append(f'model.{key}: checkpoint {old[key]!r}, config {m[key]!r}: {why}')
  return diffs


def check_model(saved_meta: dict, cfg, step: int) -> None:
  diffs = model_differences(saved_meta['config'].get('model', {}), cfg.model, saved_meta=saved_meta)
  if diffs:
    raise UserError(f'the workdir holds a checkpoint (step {step}) of a different model config; use '
                    f'another --workdir or the same config. Differences: ' + '; '.join(diffs))


def check_stream(saved_meta: dict, cfg, step: int, accept_data_change: bool) -> bool:
  """Refuses changed DATA (and, both raw, RAW_DATA) keys unless accepted, and logs changed LOGGED keys;
  whether the data iterator starts again (True only for an accepted change)."""
  saved, now = saved_meta['config'], cfg.to_dict()
  stream = keys_of(DATA) + (keys_of(RAW_DATA) if _raw(saved) and _raw(now) else ())
  changed = differences(saved, now, stream)
  for line in differences(saved, now, keys_of(LOGGED)):
    logging.info('resuming step %d with a changed setting: %s', step, line)
  if not changed:
    return False
  if not accept_data_change:
    raise UserError(f'checkpoint step {step} was trained on other data settings ({"; ".join(changed)}): '
                    f'its data position means nothing in this stream. Restore the settings, or pass '
                    f'--accept_data_change to go on from the start of the new stream')
  logging.warning('data settings changed since step %d (%s); as --accept_data_change asks, the data '
                  'iterator starts again at the beginning of the new stream', step, '; '.join(changed))
  return True


def for_resume(saved_meta: dict, cfg, step: int, accept_data_change: bool) -> tuple[Any, bool]:
  """Resuming checkpoint `step`: cfg with the checkpoint's frozen τ, the same model, the same data stream
  (unless accepted); returns (cfg, whether the data iterator starts again). The tokenizer is checked
  when the data is opened (check_tokenizer)."""
  cfg = adopt_frozen_tau(cfg, saved_meta)
  check_model(saved_meta, cfg, step)
  return cfg, check_stream(saved_meta, cfg, step, accept_data_change)


def for_init(source_model: dict, source_meta: dict | None, cfg, source_text: str) -> tuple[Any, dict]:
  """A fresh run from a source's parameters (--init_from; the meta is None for a released file): cfg
  with its frozen τ, the same model; returns (cfg, what the run's record takes from the source's: its
  tokenizer, checked as a resume's, and where its weights were grown from)."""
  if source_meta is not None:
    cfg = adopt_frozen_tau(cfg, source_meta)
  diffs = model_differences(source_model, cfg.model, saved_meta=source_meta)
  if diffs:
    raise UserError(f'{source_text} holds another model than the config: ' + '; '.join(diffs))
  taken = {k: v for k, v in (source_meta or {}).items() if k in ('tokenizer_sha256', 'grown_from')}
  return cfg, taken


def for_growth(model_s: dict, meta_s: dict | None, cfg_b) -> ml_collections.ConfigDict:
  """cfg_b with τ settled by growth.policy; refuses any change GROWTH_RULES does not allow (naming the
  key, both values and why). meta_s: the source checkpoint's, when it has one."""
  m = cfg_b.model
  diffs = growth_differences(model_s, m, saved_meta=meta_s)
  if diffs:
    raise UserError('a growth may add blocks and parameter tokens and widen d_model and num_heads by '
                    'one integer factor, nothing else: ' + '; '.join(diffs))
  grown = ml_collections.ConfigDict(cfg_b.to_dict())
  for group in _GROUPS:
    # exact: τ stays at the checkpoint's (its frozen count, else its token count), frozen only where that
    # differs from B's count; paper: τ = √n
    old_ref = int(model_s[f'n_ref_{group}']) or int(model_s[f'n_{group}'])
    keep = cfg_b.growth.policy == 'exact' and old_ref != m[f'n_{group}']
    grown.model[f'n_ref_{group}'] = old_ref if keep else 0
  grown.lock()
  return grown


def grown_meta(grown_cfg, vocab: int, meta_s: dict | None) -> dict:
  """The grown checkpoint's record: its own config and vocab, the source's tokenizer."""
  meta = run_meta(grown_cfg, vocab)
  meta.update({k: meta_s[k] for k in TOKENIZER_META if k in (meta_s or {})})
  return meta


def for_stage(before, cfg, index: int) -> None:
  """Stage `index` of a schedule must be a growth of the stage before (GROWTH_RULES)."""
  diffs = growth_differences(before.model.to_dict(), cfg.model)
  if diffs:
    raise UserError(f'stages[{index}] is not a growth of stages[{index - 1}]: ' + '; '.join(diffs))


def for_inference(saved_meta: dict, cfg, step: int) -> ml_collections.ConfigDict:
  """Sampling or evaluating checkpoint `step`: cfg with its frozen τ, the same model."""
  cfg = adopt_frozen_tau(cfg, saved_meta)
  check_model(saved_meta, cfg, step)
  return cfg


def inference_tokenizer(saved_meta: dict, tokenizer, embedding_rows: int, step: int) -> None:
  """The checkpoint's tokenizer (when it names one), and its ids all rows of the model's embedding."""
  if saved_meta.get('tokenizer_sha256'):
    check_tokenizer(saved_meta, tokenizer.sha256, step)
  if tokenizer.vocab_size > embedding_rows:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size} ids but the model only '
                    f'{embedding_rows} embedding rows: a different tokenizer?')


def frozen_tau(m) -> list[str]:
  """'n_ref_qkv 128 ≠ n_qkv 256', ... for every group whose τ is frozen at another count."""
  return [f'n_ref_{g} {m[f"n_ref_{g}"]} ≠ n_{g} {m[f"n_{g}"]}' for g in _GROUPS
          if m[f'n_ref_{g}'] and m[f'n_ref_{g}'] != m[f'n_{g}']]


def for_export(saved_meta: dict, cfg, step: int, allow_tau_change: bool) -> tuple[Any, str | None]:
  """Writing checkpoint `step` in the reference's format (loaded for inference first): cfg with its
  frozen τ, and why the reference would compute another function (None: it computes the same). The
  reference always uses τ = √n, so a frozen τ (ADOPTED keys other than the counts) is refused unless
  `allow_tau_change`."""
  cfg = adopt_frozen_tau(cfg, saved_meta)
  frozen = frozen_tau(cfg.model)
  if not frozen:
    return cfg, None
  why = (f'checkpoint step {step} was grown with τ frozen ({", ".join(frozen)}); the reference code '
         f'always uses τ = √n, so it would compute another function')
  if not allow_tau_change:
    raise UserError(f'{why}. Export it anyway with --allow_tau_change (the logits move; it reports how '
                    f'far), or grow with growth.policy=paper (τ = √n) and train on')
  return cfg, why

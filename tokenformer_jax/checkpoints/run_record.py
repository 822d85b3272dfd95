"""What a resume may change besides the model (checkpoint.check_config refuses a different model).

The checkpoint's data position counts global batches of one stream of windows; the stream is fixed by
the seed, the window length, the global batch and the data (a prepared dataset or mixture, or a raw
corpus with its validation split). A resume that changes any of them would apply the old position to
another stream (or, with a larger validation split, validate on trained-on text), so it is refused with
the keys named, unless the user accepts it: then the data iterator starts again at the beginning of the
new stream, and the run says so. The tokenizer cannot be accepted (its ids would mean other pieces):
checkpoint.check_tokenizer refuses it always. Optimizer and schedule keys may change; each change is
logged.
"""
from absl import logging

from tokenformer_jax import config as config_lib
from tokenformer_jax.errors import UserError

STREAM_KEYS = ('seed', 'data.seq_len', 'train.batch_size', 'data.prepared', 'data.mixture')
# Only for a raw corpus (a prepared dataset carries its own split and text field).
RAW_CORPUS_KEYS = ('data.corpus', 'data.val_fraction', 'data.text_key')
LOGGED_SECTIONS = ('optimizer',)
LOGGED_KEYS = ('train.steps', 'train.grad_accum')


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


def check(saved_meta: dict, cfg, step: int, accept_data_change: bool) -> bool:
  """Refuses changed data settings (unless accepted) and logs optimizer/schedule changes; returns
  whether the data iterator starts again (True only for an accepted change)."""
  saved, now = saved_meta['config'], cfg.to_dict()
  keys = STREAM_KEYS + (RAW_CORPUS_KEYS if _raw(saved) and _raw(now) else ())
  changed = differences(saved, now, keys)
  logged = [f'{section}.{key}' for section in LOGGED_SECTIONS for key in now[section]] + list(LOGGED_KEYS)
  for line in differences(saved, now, logged):
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

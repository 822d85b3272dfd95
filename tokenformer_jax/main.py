"""Entry point: python -m tokenformer_jax.main --config=experiments/tiny.py --workdir=DIR [--mode=train].

Config overrides use ml_collections flags (--config.model.num_layers=4); the config is locked, so an
unknown key is an error. Bad input ends with one line on stderr naming the problem and exit status 2.
"""
import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tokenformer_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and the data cache go.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train'], 'What to do.')

# --- train ---
_STOP_AT = flags.DEFINE_integer('stop_at_step', None,
                                'Exit (after saving) at this step, before train.steps.')


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and grain (one line per file written); warnings still pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(f'{os.sep}{name}{os.sep}' in record.pathname for name in ('orbax', 'grain'))
    return record.levelno >= std_logging.WARNING or not noisy


def fail(message: str) -> None:
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl flag parsing; config_flags raises plain KeyError/AttributeError for unknown keys."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(f'{lines[0]} {lines[-1]}' if len(lines) > 1 and 'Traceback' in str(e) else str(e))
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    detail = str(e).replace('\\n', ' ').replace('\\', '').replace('"', '').replace("'", '')
    fail(f'bad config override: unknown key {detail}')


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    cfg = _CONFIG.value
    if cfg is None:
      fail('--config is required (e.g. --config=experiments/tiny.py)')
    cfg.to_dict()  # a config file that failed to load raises here
  except (OSError, ValueError) as e:
    fail(f'cannot load --config: {e}')
  if not _WORKDIR.value:
    fail('--workdir is required')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from tokenformer_jax import train  # after flag parsing: keeps --help fast
  workdir = os.path.abspath(_WORKDIR.value)
  try:
    if _MODE.value == 'train':
      train.train(cfg, workdir, stop_at_step=_STOP_AT.value)
  except UserError as e:
    fail(str(e))


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()

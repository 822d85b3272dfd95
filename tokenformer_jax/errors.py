"""Bad user input: the one exception type, and how an entry point reports it.

Every check of user-provided input (config values, paths, files, workdir contents) raises `UserError`
instead of asserting; an entry point (main.py, the benchmarks, launch/sweep.py) turns it into one line
`error: ...` on stderr and exit status 2 with `fail`. `parse_flags` does the same for absl and
ml_collections flag errors (an unknown --config.x key, a value of the wrong type).
"""
import sys

from absl import flags


class UserError(Exception):
  """Bad input from the user: the message names the problem and is shown as is."""


def fail(message) -> None:
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl flag parsing for app.run(flags_parser=...); config_flags raises plain KeyError/AttributeError
  for unknown keys."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(f'{lines[0]} {lines[-1]}' if len(lines) > 1 and 'Traceback' in str(e) else str(e))
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    detail = str(e).replace('\\n', ' ').replace('\\', '').replace('"', '').replace("'", '')
    fail(f'bad config override: unknown key {detail}')

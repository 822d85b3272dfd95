"""The one exception type for bad user input.

`main.py` turns a `UserError` into a one-line message on stderr and a non-zero exit, so every check of
user-provided input (config values, paths, files, workdir contents) raises this instead of asserting.
"""


class UserError(Exception):
  """Bad input from the user: the message names the problem and is shown as is."""

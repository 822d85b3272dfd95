"""The prepare pipeline on Apache Beam: one element per shard task, spread over the runner's workers.

Beam's own options choose the runner: by default Beam's local one, the FnApiRunner that the DirectRunner
runs this pipeline on (`--direct_num_workers=N --direct_running_mode=multi_processing` for N local
processes), or Dataflow, Flink and Spark with
their options; the workers need this package installed (e.g. `--setup_file` or a container image).
A shard's bad input (a line that is not JSON, undecodable bytes, ...) is not retried: the worker
records it beside the output and the driver reports it as a one-line error after the pipeline ends.
"""
import contextlib
import importlib.util
import os

from tokenformer_jax.data import manifest as manifest_lib
from tokenformer_jax.data import sources
from tokenformer_jax.errors import UserError

_ERRORS_DIR = os.path.join('.prepare', 'errors')


def _error_path(task) -> str:
  return os.path.join(task.output, _ERRORS_DIR, f'{task.index:05d}.json')


def check_installed() -> None:
  if importlib.util.find_spec('apache_beam') is None:
    raise UserError("the prepare pipeline runs on Apache Beam: pip install 'tokenformer_jax[prepare]'")


def run(tasks: list, tokenizer_bytes: bytes, beam_args: list[str]) -> None:
  """Runs prepare.process for every task on Beam; raises the first recorded bad-input error."""
  check_installed()
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel

  class PrepareShard(beam.DoFn):
    """Loads the tokenizer once per worker, then writes each task's shards."""

    def __init__(self, file_bytes: bytes):
      super().__init__()
      self._file_bytes = file_bytes
      self._tokenizer = None

    def setup(self):
      from tokenformer_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
      self._tokenizer = tokenizer_lib.Tokenizer(self._file_bytes, 'the dataset tokenizer')

    def process(self, task):
      from tokenformer_jax.data import prepare  # pylint: disable=import-outside-toplevel
      try:
        done = prepare.process(task, self._tokenizer)
      except UserError as e:
        if not sources.is_remote(task.output):
          os.makedirs(os.path.dirname(_error_path(task)), exist_ok=True)
        manifest_lib.write_json(_error_path(task), {'error': str(e)})
        return
      yield {split: entry['tokens'] for split, entry in done['shards'].items()}

  for task in tasks:  # errors of an earlier run do not count
    if not sources.is_remote(task.output) and os.path.exists(_error_path(task)):
      os.remove(_error_path(task))
  if not any(a == '--runner' or a.startswith('--runner=') for a in beam_args):
    # The DirectRunner's own engine for this pipeline; DirectRunner itself first tries to download Prism.
    beam_args = ['--runner=FnApiRunner', *beam_args]
  options = PipelineOptions(beam_args)
  try:
    with beam.Pipeline(options=options) as p:
      _ = (p | 'tasks' >> beam.Create(tasks) | 'spread' >> beam.Reshuffle()
           | 'prepare shards' >> beam.ParDo(PrepareShard(tokenizer_bytes)))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    errors = _errors(tasks)
    if errors:
      raise UserError(errors[0]) from e
    raise UserError(f'the Beam pipeline failed: {" ".join(str(e).split())[:300]}') from e
  errors = _errors(tasks)
  if errors:
    more = f' (and {len(errors) - 1} more shards with errors)' if len(errors) > 1 else ''
    raise UserError(errors[0] + more)


def _errors(tasks) -> list[str]:
  """The recorded errors; local records are removed once read (reported, they are no resumable state)."""
  found = []
  for task in tasks:
    record = manifest_lib.read_json(_error_path(task))
    if record:
      found.append(record['error'])
      if not sources.is_remote(task.output):
        os.remove(_error_path(task))
  if tasks and not sources.is_remote(tasks[0].output):
    with contextlib.suppress(OSError):  # only when empty
      os.rmdir(os.path.dirname(_error_path(tasks[0])))
  return found

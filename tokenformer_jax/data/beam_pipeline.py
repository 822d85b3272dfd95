"""The prepare pipeline on Apache Beam: one element per shard task, spread over the runner's workers.

Beam's own options choose the runner: by default Beam's local one, the FnApiRunner that the DirectRunner
runs this pipeline on, with a worker thread per core (`--direct_num_workers=N` for N;
`--direct_running_mode=multi_processing` for processes instead of threads), or Dataflow, Flink and Spark
with their options; the workers need this package installed (e.g. `--setup_file` or a container image).
A worker encodes on one core, so a runner's parallelism is its number of workers; the threads of one
process share one tokenizer (each thread encodes with its own tiktoken encoder, outside the GIL).

The local threads run in the FnApiRunner's `in_memory` mode: it runs a bundle per worker on a thread
pool, as `multi_threading` does, without the in-process gRPC server and its ~20 threads that
`multi_threading` starts (less CPU and wall time, measured side by side in docs/data.md). Beam warns
that `in_memory` with several workers may not run them in parallel: that holds for work that keeps
Python's lock, and ours encodes outside it, so the warning is left out when the mode is ours to choose.
A shard's bad input (a line that is not JSON, undecodable bytes, ...) is not retried: the worker
records it beside the output and the driver reports it as a one-line error after the pipeline ends.
"""
import contextlib
import importlib.util
import logging
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


def run(tasks: list, tokenizer, beam_args: list[str], write_shards) -> None:
  """Runs `write_shards(task, tokenizer, parallel=False)` (build.process, passed in so that this module
  does not import its caller) for every task on Beam; raises the first recorded bad-input error.

  Workers in this process (the local runner's threads) use `tokenizer` itself; others load its file."""
  check_installed()
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  import zstandard  # pylint: disable=import-outside-toplevel  (Beam's own dependency)
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.utils import shared  # pylint: disable=import-outside-toplevel

  class PrepareShard(beam.DoFn):
    """Loads the tokenizer once per worker process, then writes each task's shards, encoding on one core."""

    def __init__(self, file_bytes: bytes | None, handle: shared.Shared):
      super().__init__()
      self._write_shards = write_shards   # a module-level function: pickled by reference for workers
      # Beam pickles a DoFn with bz2 (0.2 s for a 2.5 MB tokenizer.json, and unpickles it per worker);
      # zstd first leaves bz2 a quarter of the bytes.
      self._file_zstd = None if file_bytes is None else zstandard.ZstdCompressor(level=3).compress(file_bytes)
      self._shared = handle
      self._tokenizer = None

    def setup(self):
      from tokenformer_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
      self._tokenizer = self._shared.acquire(
          lambda: tokenizer_lib.Tokenizer(zstandard.ZstdDecompressor().decompress(self._file_zstd),
                                          'the dataset tokenizer'))

    def process(self, task):
      try:
        # One core per worker: the runner starts a worker per core (or as many as asked).
        done = self._write_shards(task, self._tokenizer, parallel=False)
      except UserError as e:
        if not sources.is_remote(task.output):
          os.makedirs(os.path.dirname(_error_path(task)), exist_ok=True)
        manifest_lib.write_json(_error_path(task), {'error': str(e)})
        return
      yield {split: entry['tokens'] for split, entry in done['shards'].items()}

  handle = shared.Shared()
  handle.acquire(lambda: tokenizer)  # held by the caller for the whole run
  for task in tasks:  # errors of an earlier run do not count
    if not sources.is_remote(task.output) and os.path.exists(_error_path(task)):
      os.remove(_error_path(task))
  options = PipelineOptions(local_defaults(beam_args))
  # Workers in this process take the tokenizer from `handle`; only other processes need its file.
  file_bytes = None if workers_in_this_process(options) else tokenizer.file_bytes
  try:
    with _quiet_thread_warning(beam_args), beam.Pipeline(options=options) as p:
      # Create reshuffles its elements, so that the runner spreads them over its workers.
      _ = (p | 'tasks' >> beam.Create(tasks)
           | 'prepare shards' >> beam.ParDo(PrepareShard(file_bytes, handle)))
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


def _given(beam_args: list[str], name: str) -> bool:
  return any(a == name or a.startswith(f'{name}=') for a in beam_args)


def local_defaults(beam_args: list[str]) -> list[str]:
  """Without a runner: the DirectRunner's own engine for this pipeline (DirectRunner itself first tries
  to download Prism), with a worker thread per core unless the worker count is given; the threads run in
  the engine's default (`in_memory`) mode unless another is given."""
  if _given(beam_args, '--runner'):
    return beam_args
  defaults = ['--runner=FnApiRunner']
  if not _given(beam_args, '--direct_num_workers'):
    defaults.append('--direct_num_workers=0')  # 0: one per core
  return [*defaults, *beam_args]


class _WithoutThreadWarning(logging.Filter):
  """Drops the FnApiRunner's warning that several workers in `in_memory` mode may not run in parallel."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('If direct_num_workers is not equal to 1')


@contextlib.contextmanager
def _quiet_thread_warning(beam_args: list[str]):
  """While the pipeline runs, without Beam's in_memory warning when the mode is ours (module doc)."""
  if _given(beam_args, '--runner') or _given(beam_args, '--direct_running_mode'):
    yield
    return
  logger = logging.getLogger('apache_beam.runners.portability.fn_api_runner.fn_runner')
  quiet = _WithoutThreadWarning()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def workers_in_this_process(options) -> bool:
  """Whether the runner runs every worker as a thread of this process: Beam's local engine (the
  FnApiRunner), unless its running mode is multi_processing."""
  from apache_beam.options import pipeline_options  # pylint: disable=import-outside-toplevel
  runner = options.view_as(pipeline_options.StandardOptions).runner or ''
  mode = options.view_as(pipeline_options.DirectOptions).direct_running_mode
  return runner.split('.')[-1] == 'FnApiRunner' and mode != 'multi_processing'


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

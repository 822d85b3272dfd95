"""Score a checkpoint on lm-evaluation-harness tasks (the paper's Table 1: lambada_openai, hellaswag,
piqa, arc_easy, arc_challenge, winogrande, zero-shot):

  python -m tokenformer_jax.lm_eval --config=experiments/pile.py:150m --workdir=DIR \
      --tasks=lambada_openai,piqa [--num_fewshot=0] [--limit=N] [--score_batch_size=16] \
      [--output=FILE.json] [--include_path=MY_TASKS_DIR] [--restore_step=N] [--sample_seed=N]

The model is the workdir's latest checkpoint (or --restore_step), restored onto the config's mesh
(lm_eval_adapter.py: batched, length-bucketed scoring; the checkpoint's tokenizer). The harness reads each
task's data through Hugging Face `datasets`, so its standard tasks need the data downloaded or cached;
`--include_path` adds task YAMLs of your own (over local JSON Lines files, say). Results print as the
harness's table; --output writes them as JSON (process 0; a temporary file renamed). Several processes
join one run as main.py's do (the same flags: runtime/process_flags.py; automatic on TPU pods and under
SLURM), each started with the same settings.
Needs the eval extra: pip install -e '.[eval]'.
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tokenformer_jax.errors import UserError, fail, parse_flags
from tokenformer_jax.runtime import platforms
from tokenformer_jax.runtime import process_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir whose checkpoint is scored.')
_TASKS = flags.DEFINE_list('tasks', None, 'Comma-separated harness task names.')
_NUM_FEWSHOT = flags.DEFINE_integer('num_fewshot', None, 'Examples in each prompt (task default if unset).')
_LIMIT = flags.DEFINE_float('limit', None, 'Documents per task (< 1: a fraction), for quick runs.')
_BATCH = flags.DEFINE_integer('score_batch_size', 16, 'Rows per scoring batch (fixed: one compile per '
                              'length); not train.batch_size.')
_OUTPUT = flags.DEFINE_string('output', None, 'Write the results as JSON here.')
_INCLUDE = flags.DEFINE_string('include_path', None, 'A folder of task YAMLs of your own.')
_RESTORE_STEP = flags.DEFINE_integer('restore_step', None, 'Score this checkpoint instead of the latest.')
_SAMPLE_SEED = flags.DEFINE_integer('sample_seed', None, 'Seed of sampled generation and of few-shot '
                                    'example choice; sets sampling.seed (as main.py\'s flag does).')


def load_model(cfg, workdir: str, batch_size: int, step: int | None, seed: int):
  """The harness model over the workdir's checkpoint, with the checkpoint's tokenizer."""
  from tokenformer_jax.checkpoints import run_record  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.data import dataset as dataset_lib  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.inference import lm_eval_adapter  # pylint: disable=import-outside-toplevel
  from tokenformer_jax.inference import loading  # pylint: disable=import-outside-toplevel
  if batch_size < 1:
    raise UserError(f'--score_batch_size must be positive, got {batch_size}')
  restored = loading.load(cfg, workdir, step)
  tokenizer = dataset_lib.tokenizer_for_inference(loading.data_config(cfg, workdir, restored), workdir)
  run_record.inference_tokenizer(restored.meta, tokenizer, restored.vocab_size, restored.step)
  return lm_eval_adapter.TokenFormerLM(restored.graphdef, restored.params, restored.spec.mesh, tokenizer,
                               context=cfg.data.seq_len, batch_size=batch_size, seed=seed)


def task_manager(tasks: list[str], include_path: str | None):
  """The harness's task index holding every task asked for. Tasks of --include_path alone come from an
  index of that folder: indexing the harness's own thousands of task YAMLs takes seconds in every
  process, so that is done only for a task the folder lacks. Unknown task names are a UserError listing
  them, before any checkpoint is read."""
  from lm_eval.tasks import TaskManager  # pylint: disable=import-outside-toplevel
  if include_path and not os.path.isdir(include_path):
    raise UserError(f'--include_path is not a folder: {include_path}')
  if include_path:
    local = TaskManager(include_path=include_path, include_defaults=False)
    if all(t in local.all_tasks for t in tasks):
      return local
  manager = TaskManager(include_path=include_path) if include_path else TaskManager()
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if unknown:
    raise UserError(f'unknown task(s) {", ".join(unknown)} (see `lm-eval ls tasks`, or --include_path '
                    f'for task YAMLs of your own)')
  return manager


def score_tasks(model, tasks: list[str], manager, num_fewshot, limit, seed: int) -> dict:
  """simple_evaluate on `model` over tasks that `manager` holds."""
  import lm_eval  # pylint: disable=import-outside-toplevel
  try:
    return lm_eval.simple_evaluate(model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                   task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                   fewshot_random_seed=seed, bootstrap_iters=0)
  except ConnectionError as e:
    raise UserError(f'a task\'s data could not be fetched ({str(e)[:200]}): download it into the '
                    f'Hugging Face cache first, or define the task over local files (--include_path)') from e


def write_json(results: dict, path: str) -> None:
  path = os.path.abspath(os.path.expanduser(path))
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump({k: results[k] for k in ('results', 'versions', 'n-shot', 'configs') if k in results}, f,
              indent=1, default=str)
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value or not _TASKS.value:
    fail('--workdir and --tasks are required')
  try:
    from tokenformer_jax import config as config_lib  # pylint: disable=import-outside-toplevel
    cfg = config_lib.from_flag(_CONFIG)
    if _SAMPLE_SEED.value is not None:
      cfg.sampling.seed = _SAMPLE_SEED.value
    try:
      from lm_eval.utils import make_table  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise UserError("lm-evaluation-harness is not installed: pip install -e '.[eval]'") from e
    if _OUTPUT.value and not os.path.isdir(os.path.dirname(os.path.abspath(_OUTPUT.value))):
      raise UserError(f'no such folder for --output: {os.path.dirname(os.path.abspath(_OUTPUT.value))}')
  except UserError as e:
    fail(str(e))
  logging.set_verbosity(logging.WARNING)
  status, message = _run(cfg, os.path.abspath(_WORKDIR.value), make_table)
  if message:
    print(message, file=sys.stderr, flush=True)
  if status:
    sys.exit(status)


def _run(cfg, workdir: str, make_table) -> tuple[int, str]:
  """Joins the run (as main.py does: every process with the same settings), scores, prints the table on
  process 0; returns the exit status and a last line for stderr."""
  from tokenformer_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
  status, message = 1, ''   # an exception that escapes: a bug
  try:
    process_flags.join()
    holders = [v for v in globals().values() if isinstance(v, flags.FlagHolder)]
    distributed.agree({'config': cfg.to_dict(), 'workdir': workdir, 'flags': process_flags.shared(holders)})
    import jax  # pylint: disable=import-outside-toplevel
    manager = task_manager(_TASKS.value, _INCLUDE.value)
    model = load_model(cfg, workdir, _BATCH.value, _RESTORE_STEP.value, cfg.sampling.seed)
    results = score_tasks(model, _TASKS.value, manager, _NUM_FEWSHOT.value, _LIMIT.value, cfg.sampling.seed)
    if jax.process_index() == 0:
      print(make_table(results), flush=True)
      if _OUTPUT.value:
        write_json(results, _OUTPUT.value)
    status = 0
  except UserError as e:
    status, message = 2, f'error: {" ".join(str(e).split())}'
  except Exception:
    distributed.check_peers()   # a collective that failed because a process died ends here, in one line
    raise
  finally:
    distributed.leave(status)
  return status, message


def run():
  platforms.choose()
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()

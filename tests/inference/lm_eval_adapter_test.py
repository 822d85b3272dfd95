"""lm_eval_adapter.py and lm_eval.py: our model under lm-evaluation-harness, on tasks defined here over local
JSON Lines (task data cannot be downloaded on these machines): rolling loglikelihoods equal
`--mode=eval`'s nats on the same text, multiple-choice loglikelihoods equal an independent masked loss,
scoring compiles once per length bucket, and the command line scores a multiple-choice and a
generation task."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT, error_line, finish, free_port, train_small
from tokenformer_jax.inference import evaluate

lm_eval = pytest.importorskip('lm_eval', reason="lm-evaluation-harness is the eval extra (pip install -e '.[eval]')")
from lm_eval.api.instance import Instance  # noqa: E402

from tokenformer_jax import lm_eval as lm_eval_cli  # noqa: E402

pytestmark = pytest.mark.slow

TEXT = ('In the beginning God created the heaven and the earth. And the earth was without form, and '
        'void; and darkness was upon the face of the deep. ') * 6
MC = [{'question': 'In the beginning God created the', 'choices': [' heaven', ' banana', ' river'], 'answer': 0},
      {'question': 'And God said, Let there be', 'choices': [' light', ' cheese', ' seven'], 'answer': 0},
      {'question': 'The LORD is my', 'choices': [' shepherd', ' table', ' window'], 'answer': 1}]
GEN = [{'prompt': 'In the beginning God created the heaven and the', 'target': ' earth'},
       {'prompt': 'And God said, Let there be light: and there was', 'target': ' light'}]


def write_tasks(folder) -> str:
  folder.mkdir(exist_ok=True)
  for name, rows in (('mc', MC), ('gen', GEN)):
    (folder / f'{name}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  common = 'dataset_path: json\ntest_split: test\n'
  (folder / 'local_mc.yaml').write_text(
      f'task: local_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / "mc.jsonl"}\n'
      'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
      'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
      '    higher_is_better: true\n')
  (folder / 'local_gen.yaml').write_text(
      f'task: local_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {folder / "gen.jsonl"}\n'
      'output_type: generate_until\ndoc_to_text: "{{prompt}}"\ndoc_to_target: "{{target}}"\n'
      'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n  do_sample: false\n'
      'metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n')
  return str(folder)


@pytest.fixture(scope='module')
def trained(data_cache, tmp_path_factory):
  return train_small(tmp_path_factory.mktemp('harness'), data_cache, steps=20)


@pytest.fixture(scope='module')
def model(trained):
  c, workdir = trained
  return lm_eval_cli.load_model(c, workdir, batch_size=4, step=None, seed=0)


def _instance(kind, args, idx=0):
  return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def test_rolling_loglikelihood_is_minus_the_nats_of_eval(trained, model):
  c, _ = trained
  rolling = model.loglikelihood_rolling([_instance('loglikelihood_rolling', (TEXT,))])[0]
  result = evaluate.evaluate_text(model_spec(trained), c, model.params, model.tok, TEXT)
  assert result.tokens > c.data.seq_len  # several windows
  assert rolling == pytest.approx(-result.loss * result.tokens, rel=1e-4)  # float32 sums


def model_spec(trained):
  from tokenformer_jax.inference import loading
  c, workdir = trained
  return loading.load(c, workdir).spec


def test_choice_loglikelihoods_equal_an_independent_masked_loss(trained, model):
  c, _ = trained
  spec = model_spec(trained)
  requests = [_instance('loglikelihood', (doc['question'], choice), i)
              for i, doc in enumerate(MC) for choice in doc['choices']]
  scored = model.loglikelihood(requests)
  for request, (logprob, _) in zip(requests, scored):
    context, continuation = request.args
    ctx, cont = model.tok.encode(context), model.tok.encode(context + continuation)[len(model.tok.encode(context)):]
    tokens = np.array([ctx + cont], np.int32)
    mask = np.zeros((1, tokens.shape[1] - 1), np.float32)
    mask[0, len(ctx) - 1:] = 1.0
    nats = evaluate.total_nats(spec, c, model.params, tokens, mask)
    assert logprob == pytest.approx(-nats, rel=1e-5, abs=1e-5)


def test_scoring_compiles_once_per_length_bucket(model):
  before = model.traces['score']
  rng = np.random.default_rng(0)
  pairs = [(list(rng.integers(1, 500, n)), [7, 8]) for n in rng.integers(1, 30, 12)]  # all in bucket 32
  model.score_pairs(pairs)
  model.score_pairs(pairs[:5])
  assert model.traces['score'] - before <= 1
  long = [(list(rng.integers(1, 500, 200)), [7])]   # cut from the left to the 64-token context
  assert model.score_pairs(long)[0] == model.score_pairs([(long[0][0][-64:], [7])])[0]


def test_tasks_of_the_include_path_alone_skip_the_harness_index(tmp_path):
  """Indexing the harness's own task YAMLs takes seconds per process: a run whose tasks are all in
  --include_path does without it."""
  tasks = write_tasks(tmp_path / 'tasks')
  manager = lm_eval_cli.task_manager(['local_mc', 'local_gen'], tasks)
  assert set(manager.all_tasks) == {'local_mc', 'local_gen'}


def _cli(*args):
  env = dict(os.environ, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1')
  return subprocess.run([sys.executable, '-m', 'tokenformer_jax.lm_eval', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def _config_args(c) -> list[str]:
  return [f'--config={ROOT}/experiments/tiny.py', f'--config.data.cache_dir={c.data.cache_dir}',
          *[f'--config.model.{k}={c.model[k]}' for k in ('num_layers', 'd_model', 'n_qkv', 'n_proj', 'n_ffn')],
          '--config.data.vocab_size=512', '--config.data.seq_len=64']


def test_the_command_line_scores_a_choice_and_a_generation_task(trained, tmp_path):
  c, workdir = trained
  tasks = write_tasks(tmp_path / 'tasks')
  config = _config_args(c)
  out = tmp_path / 'results.json'
  proc = _cli(*config, f'--workdir={workdir}', '--tasks=local_mc,local_gen', f'--include_path={tasks}',
              f'--output={out}', '--score_batch_size=4')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())['results']
  assert 0.0 <= results['local_mc']['acc,none'] <= 1.0
  assert results['local_gen']['exact_match,none'] in (0.0, 0.5, 1.0)
  assert 'local_mc' in proc.stdout and 'exact_match' in proc.stdout

  proc = _cli(*config, f'--workdir={workdir}', '--tasks=local_mc,no_such_task', f'--include_path={tasks}')
  assert proc.returncode == 2 and 'unknown task(s) no_such_task' in error_line(proc.stderr)
  proc = _cli(*config, f'--workdir={tmp_path / "empty"}', '--tasks=local_mc', f'--include_path={tasks}')
  assert proc.returncode == 2 and 'no checkpoint in' in error_line(proc.stderr)


def test_two_processes_join_one_run_as_main_does(trained, tmp_path):
  """The runtime flags reach distributed.initialize, and the processes compare their settings first."""
  c, workdir = trained
  tasks = write_tasks(tmp_path / 'tasks')
  env = dict(os.environ, HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1', JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  base = [sys.executable, '-m', 'tokenformer_jax.lm_eval', *_config_args(c), f'--workdir={workdir}',
          '--tasks=local_mc', f'--include_path={tasks}', '--score_batch_size=4', '--num_processes=2']
  proc = _cli(*base[3:], '--coordinator_address=localhost:1', '--process_id=2')
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert error_line(proc.stderr) == 'error: --process_id=2 is not in [0, --num_processes=2)'

  def run_two(extra):
    port = free_port()
    procs = [subprocess.Popen(base + [f'--coordinator_address=localhost:{port}', f'--process_id={i}',
                                      *extra[i]], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(2)]
    errors = finish(procs)
    return procs, errors

  procs, errors = run_two([[], ['--sample_seed=1']])
  for p, stderr in zip(procs, errors):
    assert p.returncode == 2, stderr[-2000:]
    line = error_line(stderr)
    assert line.startswith('error: the processes of this run were started with different settings'), line
    assert 'config.sampling.seed: 0 on process 0, 1 on process 1' in line and 'flags.sample_seed' in line

  out = tmp_path / 'two.json'
  procs, errors = run_two([[f'--output={out}'], [f'--output={out}']])
  assert [p.returncode for p in procs] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
  assert 0.0 <= json.loads(out.read_text())['results']['local_mc']['acc,none'] <= 1.0

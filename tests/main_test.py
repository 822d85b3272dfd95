"""The command line: every bad input ends with one clear line, a non-zero exit, and an untouched workdir."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import FAST, ROOT, TINY, error_line, run_main, tree_digest


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('trained')
  code, out, err = run_main(*FAST, workdir=workdir)
  assert code == 0, err
  assert '--- sample ---' in out
  return workdir


@pytest.mark.slow
def test_train_then_rerun_is_a_no_op_resume(trained_workdir):
  before = tree_digest(trained_workdir / 'checkpoints')
  code, _, err = run_main(*FAST, workdir=trained_workdir)
  assert code == 0, err
  assert tree_digest(trained_workdir / 'checkpoints') == before


@pytest.mark.parametrize('args,message', [
    (['--config.model.no_such_key=1'], 'no_such_key'),
    (['--config.model.num_heads=3'], 'num_heads=3 does not divide model.d_model'),
    (['--config.model.n_ffn=0'], 'model.n_ffn must be positive'),
    (['--config.model.n_qkv=-4'], 'model.n_qkv must be positive'),
    (['--config.data.corpus=/nonexistent/corpus.txt'], '/nonexistent/corpus.txt'),
    (['--config.model.vocab_size=256'], 'model.vocab_size=256 is smaller than the tokenizer vocab (512)'),
    (['--config.data.prepared=/nonexistent'], 'no prepared dataset in /nonexistent'),
    (['--config.data.mixture=/a:x'], 'data.mixture wants DIR:WEIGHT'),
    (['--config.train.profile_steps=(5,)'], 'train.profile_steps must be (START, COUNT)'),
    (['--config.metrics.wandb_mode=cloud'], "metrics.wandb_mode must be one of ('online', 'offline')"),
])
@pytest.mark.slow
def test_bad_config(tmp_path, args, message):
  code, _, err = run_main(*FAST, *args, workdir=tmp_path / 'w')
  assert code != 0
  assert message in error_line(err), err
  assert not (tmp_path / 'w' / 'checkpoints').exists()


@pytest.mark.slow
def test_empty_corpus(tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('  \n')
  code, _, err = run_main(*FAST, f'--config.data.corpus={empty}', workdir=tmp_path / 'w')
  assert code == 2 and 'the input has no text' in error_line(err), err


@pytest.mark.slow
def test_tokenizer_that_is_not_sentencepiece(tmp_path):
  bogus = tmp_path / 'bogus.model'
  bogus.write_bytes(b'this is not a sentencepiece model')
  code, _, err = run_main(*FAST, f'--config.data.tokenizer={bogus}', workdir=tmp_path / 'w')
  assert code != 0
  assert 'not a sentencepiece model' in error_line(err) and str(bogus) in error_line(err), err


@pytest.mark.slow
@pytest.mark.parametrize('args', [['--config.model.n_ffn=128'], ['--config.model.num_layers=2'],
                                  ['--config.data.vocab_size=640']])
def test_refuses_workdir_of_a_different_model(trained_workdir, args):
  before = tree_digest(trained_workdir)
  code, _, err = run_main(*FAST, *args, workdir=trained_workdir)
  assert code != 0
  line = error_line(err)
  assert code == 2 and args[0].split('=')[0][len('--config.'):] in line, err
  assert ('different model config' if 'model' in args[0] else 'was prepared from other data') in line
  assert tree_digest(trained_workdir) == before


@pytest.mark.slow
def test_the_outcome_of_a_training_run_is_left_in_its_workdir(trained_workdir, tmp_path):
  """WORKDIR/status: done after a run; failed (2) after a run that diverged; nothing from a refusal
  (above: the workdir stays as it was)."""
  assert json.loads((trained_workdir / 'status').read_text())['status'] == 'done'
  code, _, err = run_main(*FAST, '--config.optimizer.lr=1e30', '--config.train.steps=6',
                          '--config.train.log_every=1', '--config.train.sample_tokens=0',
                          workdir=tmp_path / 'w')
  assert code == 2 and 'not finite at step' in error_line(err), err
  record = json.loads((tmp_path / 'w' / 'status').read_text())
  assert (record['status'], record['exit_status']) == ('failed', 2)


def test_missing_flags(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and '--workdir is required' in error_line(proc.stderr)


@pytest.mark.slow
def test_generate_and_eval_leave_the_workdir_untouched(trained_workdir, tmp_path):
  before = tree_digest(trained_workdir / 'checkpoints')
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('And God said\nIn the beginning\n')
  code, out, err = run_main(*FAST, '--mode=generate', f'--prompt_file={prompts}', '--max_new_tokens=6',
                            '--temperature=0', workdir=trained_workdir)
  assert code == 0, err
  assert '--- sample 0 (step 2) ---\nAnd God said' in out, out
  assert '--- sample 1 (step 2) ---\nIn the beginning' in out, out
  code, out, err = run_main(*FAST, '--mode=eval', workdir=trained_workdir)
  assert code == 0, err
  with open(trained_workdir / 'metrics.jsonl') as f:
    val_loss = [json.loads(line) for line in f if 'val_loss' in line][-1]['val_loss']
  assert f'loss {val_loss:.4f}, perplexity' in out, out  # the val loss training logged
  assert tree_digest(trained_workdir / 'checkpoints') == before


@pytest.mark.slow
@pytest.mark.parametrize('args,message', [
    (['--mode=generate', '--prompt=Hi'], 'no checkpoint in'),
    (['--mode=eval'], 'no checkpoint in'),
    (['--mode=generate'], 'needs --prompt or --prompt_file'),
    (['--mode=convert'], 'needs --reference_file'),
])
def test_inference_modes_refuse_bad_input(tmp_path, args, message):
  code, _, err = run_main(*FAST, *args, workdir=tmp_path / 'w')
  assert code == 2 and message in error_line(err), err
  assert not (tmp_path / 'w' / 'checkpoints').exists()


@pytest.mark.slow
def test_pile_config_trains_on_a_dataset_prepared_with_a_tokenizer_json(tmp_path):
  """The released models' tokenizer format end to end: prepare → train → generate → eval, one tokenizer."""
  from tests.helpers import write_hf_tokenizer
  from tokenformer_jax.data import sources
  chapters = [c for d in list(sources.documents(sources.KJV))[:3] for c in d.split('\n\n')]
  (tmp_path / 'corpus.jsonl').write_text(''.join(json.dumps({'text': c}) + '\n' for c in chapters))
  tok = write_hf_tokenizer(tmp_path / 'tokenizer.json', vocab_size=400)
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.prepare', f'--corpus={tmp_path}/corpus.jsonl',
                         f'--prepared={tmp_path}/pile', f'--tokenizer={tok}', '--val_fraction=0.1'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  small = [a for a in FAST if 'vocab_size' not in a and 'sample_tokens' not in a] + [
      '--config.model.dtype=float32', '--config.model.remat=none', f'--config.data.prepared={tmp_path}/pile',
      '--config.train.sample_tokens=8', '--config.train.log_every=1']
  pile = f'{ROOT}/experiments/pile.py:150m'
  workdir = tmp_path / 'w'
  code, out, err = run_main(*small, workdir=workdir, config=pile)
  assert code == 0, err
  assert '--- sample ---' in out and not (workdir / 'data').exists()
  code, out, err = run_main(*small, '--mode=generate', '--prompt=In the beginning', '--max_new_tokens=4',
                            workdir=workdir, config=pile)
  assert code == 0 and 'In the beginning' in out, err
  code, out, err = run_main(*small, '--mode=eval', workdir=workdir, config=pile)
  assert code == 0 and 'on the validation split' in out, err
  other = write_hf_tokenizer(tmp_path / 'other.json', vocab_size=280)
  no_dataset = [a for a in small if 'data.prepared' not in a]
  code, _, err = run_main(*no_dataset, '--mode=generate', '--prompt=In', f'--config.data.tokenizer={other}',
                          workdir=workdir, config=pile)
  assert code == 2 and 'was trained with tokenizer sha256' in error_line(err), err


@pytest.mark.slow
@pytest.mark.parametrize('args,rows', [(['--config.train.batch_size=6'], '6 rows'),
                                       (['--config.train.batch_size=8', '--config.train.grad_accum=4'],
                                        '2 rows')])
def test_a_batch_the_mesh_cannot_split_is_refused_before_anything_is_written(tmp_path, args, rows):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', f'--config={TINY}',
                         f'--workdir={tmp_path / "w"}', *FAST, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  line = error_line(proc.stderr)
  assert proc.returncode == 2 and rows in line and 'not divisible by the 4 batch shards' in line, line
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_stop_at_step_must_be_positive(tmp_path):
  code, _, err = run_main(*FAST, '--stop_at_step=0', workdir=tmp_path / 'w')
  assert code == 2 and '--stop_at_step must be positive' in error_line(err), err
  assert not (tmp_path / 'w').exists()


STAGES = f'{ROOT}/experiments/tiny_stages.py'


def test_every_flag_of_main_says_where_it_applies():
  """A new flag without a row in APPLIES_TO would be accepted by every mode and maybe ignored."""
  script = ('from absl import flags; from tokenformer_jax import main; '
            'from tokenformer_jax.runtime import process_flags; '
            'names = {v.name for v in [*vars(main).values(), *process_flags.HOLDERS] '
            'if isinstance(v, flags.FlagHolder)}; '
            'print(sorted(names ^ set(main.APPLIES_TO))); '
            'modes = {m for modes in main.APPLIES_TO.values() for m in modes}; '
            'print(sorted(modes - set(main.MODES) - {main.STAGED}))')
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split('\n')[:2] == ['[]', '[]'], proc.stdout


@pytest.mark.parametrize('config,args,flag,target', [
    (TINY, ['--mode=eval', '--prompt=Hi'], '--prompt', '--mode=eval'),
    (TINY, ['--mode=eval', '--temperature=0'], '--temperature', '--mode=eval'),
    (TINY, ['--topology=v5p:2x2x1'], '--topology', '--mode=train'),
    (TINY, ['--mode=generate', '--prompt=Hi', '--grow_from=/tmp/src'], '--grow_from', '--mode=generate'),
    (TINY, ['--mode=grow', '--grow_from=/tmp/src', '--restore_step=2'], '--restore_step', '--mode=grow'),
    (TINY, ['--mode=convert', '--export_file=out.safetensors'], '--export_file', '--mode=convert'),
    (TINY, ['--mode=export', '--reference_file=in.safetensors'], '--reference_file', '--mode=export'),
    (STAGES, ['--stop_at_step=1'], '--stop_at_step', 'a staged run'),
    (STAGES, ['--restore_step=2'], '--restore_step', 'a staged run'),
    (STAGES, ['--init_from=/tmp/src'], '--init_from', 'a staged run'),
])
def test_a_flag_the_mode_would_not_use_is_refused(tmp_path, config, args, flag, target):
  code, _, err = run_main(*FAST, *args, workdir=tmp_path / 'w', config=config)
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert code == 2 and len(errors) == 1, err
  assert errors[0].startswith(f'error: {flag} does not apply to {target}'), errors[0]
  assert not (tmp_path / 'w').exists()


def test_compile_refuses_a_workdir(tmp_path):
  code, _, err = run_main('--mode=compile', '--topology=v5p:2x2x1', workdir=tmp_path / 'w')
  assert code == 2 and error_line(err).startswith('error: --workdir does not apply to --mode=compile'), err


@pytest.mark.slow
def test_sampling_comes_from_the_config_and_a_given_flag_overrides_it(trained_workdir):
  """--mode=generate's flags are unset unless given: the config's sampling section decides, and a flag
  given overrides its key."""
  from_config = run_main(*FAST, '--mode=generate', '--prompt=And God', '--config.sampling.temperature=0',
                         '--config.sampling.max_new_tokens=5', workdir=trained_workdir)
  from_flags = run_main(*FAST, '--mode=generate', '--prompt=And God', '--config.sampling.temperature=3',
                        '--config.sampling.max_new_tokens=60', '--temperature=0', '--max_new_tokens=5',
                        workdir=trained_workdir)
  assert from_config[0] == 0 and from_flags[0] == 0, from_config[2] + from_flags[2]
  assert from_config[1] == from_flags[1] and '--- sample 0 (step 2) ---\nAnd God' in from_config[1]


@pytest.mark.slow
def test_grow_from_names_the_source_step(trained_workdir, tmp_path):
  """--grow_from=WORKDIR:STEP (the syntax of --init_from) instead of a --restore_step of another workdir."""
  code, _, err = run_main(*FAST, '--mode=grow', f'--grow_from={trained_workdir}:7', '--config.model.n_ffn=128',
                          workdir=tmp_path / 'w')
  assert code == 2 and f'--grow_from={trained_workdir}:7: no such checkpoint in {trained_workdir}' in error_line(err), err
  code, _, err = run_main(*FAST, '--mode=grow', f'--grow_from={trained_workdir}:2', '--config.model.n_ffn=128',
                          workdir=tmp_path / 'w')
  assert code == 0, err
  from tokenformer_jax.checkpoints import store
  mngr = store.manager(str(tmp_path / 'w'), create=False)
  assert store.read_meta(mngr, mngr.latest_step())['grown_from']['step'] == 2

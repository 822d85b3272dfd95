"""The experiment loader and overrides: what main.py's --config and --config.x=y give, for tools."""
import subprocess
import sys

import pytest

from tests.helpers import ROOT
from tokenformer_jax import config as config_lib
from tokenformer_jax.errors import UserError


def test_load_experiment_with_its_argument_and_overrides():
  c = config_lib.load_experiment(f'{ROOT}/experiments/pile.py:450m', {'train.steps': 7, 'optimizer.lr': 1})
  assert (c.model.num_layers, c.model.d_model, c.train.steps) == (24, 1024, 7)
  assert c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float)
  with pytest.raises(AttributeError):      # locked, as main.py's --config
    c.model.no_such_key = 1


def test_experiments_import_each_other():
  stages = config_lib.load_experiment(f'{ROOT}/experiments/tiny_stages.py')
  tiny = config_lib.load_experiment(f'{ROOT}/experiments/tiny.py')
  assert stages.model.d_model == tiny.model.d_model and len(stages.stages) == 3


@pytest.mark.parametrize('schedule', ['tokens', 'dims'])
def test_stage_schedules_grow_the_tiny_model_stage_by_stage(schedule):
  """Each stage is a growth of the one before (the check a staged run makes before it trains); `dims`
  grows in depth, then width, then tokens, and ends at the tiny model itself."""
  from tokenformer_jax.checkpoints import run_record
  from tokenformer_jax.training import stages
  c = config_lib.load_experiment(f'{ROOT}/experiments/tiny_stages.py:{schedule}')
  configs = [stages.stage_config(c, '/nonexistent', i) for i in range(len(c.stages))]
  for i in range(1, len(configs)):
    run_record.for_stage(configs[i - 1], configs[i], i)
  if schedule == 'dims':
    sizes = [(m.num_layers, m.d_model, m.num_heads, m.n_qkv) for m in (x.model for x in configs)]
    assert sizes == [(2, 64, 2, 64), (4, 64, 2, 64), (4, 128, 4, 64), (4, 128, 4, 128)]
    tiny = config_lib.load_experiment(f'{ROOT}/experiments/tiny.py')
    assert configs[-1].model.to_dict() == tiny.model.to_dict()


def _shadowed_cwd(tmp_path):
  """A current directory holding a user's own package named `experiments` (any project may have one):
  our experiment files must not import a package by that name."""
  (tmp_path / 'experiments').mkdir()
  (tmp_path / 'experiments' / '__init__.py').write_text('raise ImportError("a user\'s experiments")\n')
  return tmp_path


def test_experiment_files_load_by_path_from_any_directory(tmp_path):
  """They share settings (common.py, the studies' cpu_training.py) and import each other (tiny_stages →
  tiny) by path, so they load from anywhere, beside a user's own `experiments` package."""
  specs = ['experiments/tiny_stages.py', 'experiments/pile.py:450m', 'experiments/progressive.py:354m',
           'studies/progressive_scaling/experiment.py:exact_carry', 'studies/kind_gap/experiment.py:dense-x4',
           'studies/grow_dims/experiment.py:width']
  code = ('import sys\nfrom tokenformer_jax import config\n'
          'print([config.load_experiment(spec).model.d_model for spec in sys.argv[1:]])')
  proc = subprocess.run([sys.executable, '-c', code, *(f'{ROOT}/{spec}' for spec in specs)],
                        cwd=_shadowed_cwd(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == str([config_lib.load_experiment(f'{ROOT}/{spec}').model.d_model
                                     for spec in specs])


def test_main_loads_an_experiment_file_by_path_from_any_directory(tmp_path):
  """main.py's --config (absl's config_flags) with an argument: the file loads (the misspelt override is
  what fails, after it), beside a user's own `experiments` package."""
  proc = subprocess.run([sys.executable, '-m', 'tokenformer_jax.main', f'--config={ROOT}/experiments/pile.py:450m',
                         f'--workdir={tmp_path / "run"}', '--config.model.d_modle=3'],
                        cwd=_shadowed_cwd(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and 'd_modle' in proc.stderr and 'cannot load' not in proc.stderr, proc.stderr
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('spec, overrides, message', [
    ('experiments/none.py', {}, 'no experiment file experiments/none.py'),
    ('experiments/pile.py:2b', {}, "unknown size '2b'"),
    ('experiments/tiny.py', {'model.d_modle': 3}, 'override model.d_modle=3: no such config key'),
    ('experiments/tiny.py', {'model.d_model': 'wide'}, "override model.d_model='wide'"),
    # a key below a leaf
    ('experiments/tiny.py', {'model.d_model.x': 1}, r'override model.d_model.x=1: no such config key'),
])
def test_bad_input_is_a_user_error(spec, overrides, message):
  with pytest.raises(UserError, match=message):
    config_lib.load_experiment(f'{ROOT}/{spec}' if 'none' not in spec else spec, overrides)


def test_apply_overrides_copies():
  base = config_lib.load_experiment(f'{ROOT}/experiments/tiny.py')
  changed = config_lib.apply_overrides(base, {'model.n_ffn': 1024})
  assert changed.model.n_ffn == 1024 and base.model.n_ffn == 512
  # ml_collections' flattened keys also reach into tuples
  rules = config_lib.apply_overrides(base, {'sharding_rules[0]': ('batch', 'data')}).sharding_rules
  assert rules[0] == ('batch', 'data') and rules[1:] == base.sharding_rules[1:]

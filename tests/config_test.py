"""The experiment loader and overrides: what main.py's --config and --config.x=y give, for tools."""
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


@pytest.mark.parametrize('spec, overrides, message', [
    ('experiments/none.py', {}, 'no experiment file experiments/none.py'),
    ('experiments/pile.py:2b', {}, "unknown size '2b'"),
    ('experiments/tiny.py', {'model.d_modle': 3}, 'override model.d_modle=3: no such config key'),
    ('experiments/tiny.py', {'model.d_model': 'wide'}, "override model.d_model='wide'"),
])
def test_bad_input_is_a_user_error(spec, overrides, message):
  with pytest.raises(UserError, match=message):
    config_lib.load_experiment(f'{ROOT}/{spec}' if 'none' not in spec else spec, overrides)


def test_apply_overrides_copies():
  base = config_lib.load_experiment(f'{ROOT}/experiments/tiny.py')
  changed = config_lib.apply_overrides(base, {'model.n_ffn': 1024})
  assert changed.model.n_ffn == 1024 and base.model.n_ffn == 512

"""Multi-stage schedules: train → grow → train → … in one command, resumable anywhere.

config.stages is a tuple of override dicts, one per stage, like a sweep's points:
  ({'model.n_qkv': 64, 'model.n_ffn': 256, 'train.steps': 300}, {'model.n_qkv': 128, ...}, ...)
Stage i's config is the experiment's config with stage i's overrides (config.apply_overrides), and
nothing else changes (each stage's model must be a growth of the one before: run_record.GROWTH_RULES,
checked for all stages before the first trains): `train.steps` is the step the stage trains until, as
in any run (with growth.optimizer=carry the step count goes on across stages, so the values add up;
with reset each stage counts from 0), and growth.freeze_old or train.sample_tokens apply to the stages
that set them.

Stage i lives in WORKDIR/stage_<i>. Stage 0 trains from scratch; stage i > 0 first grows the last
checkpoint of stage i − 1 (config.growth says how), then trains. Rerunning the command skips finished
stages, resumes an interrupted one, and redoes a growth that was cut short (a grow writes its checkpoint
atomically, so it either exists or it doesn't). All stages share one prepared copy of a raw corpus (WORKDIR/data unless
data.cache_dir says otherwise).
"""
import os

import ml_collections

from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.data import dataset as dataset_lib
from tokenformer_jax.training import growth
from tokenformer_jax.training import loop


def stage_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, f'stage_{index}')


def stage_config(cfg, workdir: str, index: int) -> ml_collections.ConfigDict:
  """The plain (single-run) config of stage `index` (loop.check validates it)."""
  return config_lib.apply_overrides(cfg, {**cfg.stages[index], 'stages': (),
                                          'data.cache_dir': dataset_lib.cache_dir_for(cfg.data, workdir)})


def run(cfg, workdir: str, accept_data_change: bool = False) -> list[loop.RunResult]:
  config_lib.validate(cfg)   # the staged config itself (its stages' overrides are well formed)
  configs = [stage_config(cfg, workdir, index) for index in range(len(cfg.stages))]
  # every stage's config is valid and its batch fits its mesh, before the first stage writes anything
  meshes = [loop.check(c) for c in configs]
  for index in range(1, len(configs)):  # and every stage is a growth of the one before
    run_record.for_stage(configs[index - 1], configs[index], index)
  results = []
  for index, (c, mesh) in enumerate(zip(configs, meshes)):
    here = stage_dir(workdir, index)
    if index > 0 and store.manager(here, create=False).latest_step() is None:
      growth.grow(c, stage_dir(workdir, index - 1), here, mesh=mesh)
    result = loop.train_checked(c, mesh, here, accept_data_change=accept_data_change)
    results.append(result)
    if result.preempted:
      break
  return results

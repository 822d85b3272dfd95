"""Multi-stage schedules: train → grow → train → … in one command, resumable anywhere.

config.stages = ((n_qkv, n_proj, n_ffn, steps), ...). Stage i lives in WORKDIR/stage_<i>. Stage 0 trains
from scratch; stage i > 0 first grows the last checkpoint of stage i − 1 (config.growth says how), then
trains. Rerunning the command skips finished stages, resumes an interrupted one, and redoes a growth
that was cut short (a grow writes its checkpoint atomically, so it either exists or it doesn't). All
stages share one data cache (WORKDIR/data unless data.cache_dir says otherwise).

Steps per stage: with growth.optimizer=reset each stage gets its own warmup + cosine over its steps;
with carry the step count goes on, so stage i trains until the cumulative step total.
"""
import os

import ml_collections

from tokenformer_jax import checkpoint, config as config_lib, growth, train


def stage_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, f'stage_{index}')


def stage_config(cfg, workdir: str, index: int) -> ml_collections.ConfigDict:
  """The plain (single-run) config of stage `index`."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  n_qkv, n_proj, n_ffn, steps = (int(v) for v in cfg.stages[index])
  c.model.n_qkv, c.model.n_proj, c.model.n_ffn = n_qkv, n_proj, n_ffn
  if cfg.growth.optimizer == 'carry':
    steps = sum(int(s[3]) for s in cfg.stages[:index + 1])
  c.train.steps = steps
  c.stages = ()
  c.data.cache_dir = cfg.data.cache_dir or os.path.join(workdir, 'data')
  if index == 0:
    c.growth.freeze_old = False
  if index != len(cfg.stages) - 1:
    c.train.sample_tokens = 0
  return c


def run(cfg, workdir: str) -> list[train.RunResult]:
  config_lib.validate(cfg)
  results = []
  for index in range(len(cfg.stages)):
    c = stage_config(cfg, workdir, index)
    here = stage_dir(workdir, index)
    if index > 0 and checkpoint.manager(here, create=False).latest_step() is None:
      growth.grow(c, stage_dir(workdir, index - 1), here)
    result = train.train(c, here)
    results.append(result)
    if result.preempted:
      break
  return results

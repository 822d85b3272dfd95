"""A workdir's checkpoint, restored for inference: the parameters on this mesh and the model graph.

Generation and evaluation read only the parameters (never the optimizer state), from a training
checkpoint or an imported one (reference_import.py), saved on any mesh: Orbax reads each shard straight onto this
mesh's devices. The config must describe the same model as the checkpoint, after taking the
checkpoint's frozen-τ counts as training does (run_record.for_inference), so a grown checkpoint is
sampled with its growth config or its base config alike.

A raw corpus is prepared into the workdir by training, so a workdir grown by `--mode=grow` holds no
prepared data until it trains; `data_config` points generation and evaluation at the data the source run
prepared (read only), so a grown model is sampled and evaluated before it trains.
"""
import dataclasses
import os
from typing import Any

import ml_collections
from absl import logging

from tokenformer_jax import config as config_lib
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.data import dataset as dataset_lib, manifest as manifest_lib
from tokenformer_jax.errors import UserError
from tokenformer_jax.runtime import sharding
from tokenformer_jax.training import state as state_lib


@dataclasses.dataclass(frozen=True)
class Restored:
  """Parameters and graph of one checkpoint; `meta` is what was saved beside them."""
  spec: state_lib.StateSpec
  params: Any
  step: int
  meta: dict

  @property
  def graphdef(self):
    return self.spec.graphdef

  @property
  def vocab_size(self) -> int:
    """The model's (padded) vocabulary."""
    return self.spec.vocab_size


def load(cfg, workdir: str, step: int | None = None) -> Restored:
  """The latest (or the given) checkpoint of `workdir`; a UserError when there is none."""
  config_lib.validate(cfg)
  mngr = store.manager(workdir, create=False)
  step = store.choose_step(mngr, step)
  if step is None:
    raise UserError(f'no checkpoint in {workdir}: train one there first (--mode=train) or import '
                    f'one (--mode=convert)')
  meta = store.read_meta(mngr, step)
  cfg = run_record.for_inference(meta, cfg, step)
  spec = state_lib.make_spec(cfg, meta['vocab_size'], sharding.make_mesh(cfg.mesh))
  targets = {'params': state_lib.abstract_targets(spec)['params']}
  params = store.restore(mngr, step, targets)['params']
  return Restored(spec, params, step, meta)


def _prepared(cache_dir: str) -> bool:
  return os.path.isfile(manifest_lib.path(cache_dir))


def grown_source_data(meta: dict) -> str | None:
  """The raw-corpus data folder that the run a checkpoint was grown from prepared, following growths of
  growths (each `grown_from` names its source workdir and step); None when no source holds one."""
  seen = set()
  while meta.get('grown_from') and meta['grown_from']['workdir'] not in seen:
    source, step = meta['grown_from']['workdir'], meta['grown_from']['step']
    seen.add(source)
    if not os.path.isdir(source):   # a released checkpoint file, or a workdir since removed
      return None
    mngr = store.manager(source, create=False)
    steps = mngr.all_steps()
    if not steps:
      return None
    meta = store.read_meta(mngr, step if step in steps else max(steps))
    saved_data = meta['config'].get('data', {})
    if not saved_data.get('prepared') and not saved_data.get('mixture'):
      cache_dir = dataset_lib.cache_dir_for(ml_collections.ConfigDict(saved_data), source)
      if _prepared(cache_dir):
        return cache_dir
  return None


def data_config(cfg, workdir: str, restored: Restored):
  """cfg.data, where the workdir holds the data it names; for a raw corpus that a grown workdir has not
  prepared yet (training prepares it), cfg.data pointed at the folder its source prepared. Opening it
  still checks that it was prepared from cfg's corpus and options, and the tokenizer against the
  checkpoint's."""
  data = cfg.data
  if data.prepared or data.mixture or _prepared(dataset_lib.cache_dir_for(data, workdir)):
    return data
  found = grown_source_data(restored.meta)
  if found is None:
    return data
  logging.info('%s has no prepared data of its own (it was grown and has not trained): reading %s, '
               'which its source run prepared', workdir, found)
  pointed = ml_collections.ConfigDict(data.to_dict())
  pointed.cache_dir = found
  return pointed

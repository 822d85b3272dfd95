"""A workdir's checkpoint, restored for inference: the parameters on this mesh and the model graph.

Generation and evaluation read only the parameters (never the optimizer state), from a training
checkpoint or an imported one (convert.py), saved on any mesh: Orbax reads each shard straight onto this
mesh's devices. The config must describe the same model as the checkpoint (checkpoint.check_config),
after taking the checkpoint's frozen-τ counts as training does (checkpoint.adopt_frozen_tau), so a grown
checkpoint is sampled with its growth config or its base config alike.
"""
import dataclasses
from typing import Any

from tokenformer_jax import checkpoint, config as config_lib, sharding
from tokenformer_jax import state as state_lib
from tokenformer_jax.errors import UserError


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
  mngr = checkpoint.manager(workdir, create=False)
  step = checkpoint.choose_step(mngr, step)
  if step is None:
    raise UserError(f'no checkpoint in {workdir}: train one there first (--mode=train) or import '
                    f'one (--mode=convert)')
  meta = checkpoint.read_meta(mngr, step)
  cfg = checkpoint.adopt_frozen_tau(cfg, meta)
  checkpoint.check_config(meta, cfg, step)
  spec = state_lib.make_spec(cfg, meta['vocab_size'], sharding.make_mesh(cfg.mesh))
  targets = {'params': state_lib.abstract_targets(spec)['params']}
  params = checkpoint.restore(mngr, step, targets)['params']
  return Restored(spec, params, step, meta)


def check_tokenizer(tokenizer, restored: Restored) -> None:
  """The checkpoint's tokenizer (when it names one), and its ids all rows of the model's embedding."""
  checkpoint.check_tokenizer(restored.meta, tokenizer, restored.step)
  if tokenizer.vocab_size > restored.vocab_size:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size} ids but the model only '
                    f'{restored.vocab_size} embedding rows: a different tokenizer?')

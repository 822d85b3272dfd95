"""Parameters from elsewhere, read strictly: a workdir's checkpoint or a released reference file.

`--init_from` starts a training run from them (step 0, a fresh optimizer state and data iterator), and
growth reads them as its source (`--grow_from`). A source is
- a workdir, `PATH` (its latest checkpoint) or `PATH:STEP`: a trained, grown or imported checkpoint.
  Only its parameters are read, each shard straight onto this run's mesh (store.restore), after
  the strict check of every saved array's path and shape;
- a released file (.safetensors, .bin, .pt, .pth) in the reference's GPT-NeoX naming, read as
  `--mode=convert` reads it: every missing, unexpected or mis-shaped tensor is listed
  (reference_import.to_params). Its token counts are the file's; everything else is the config's.
"""
import dataclasses
import os

import jax
import ml_collections
import numpy as np

from tokenformer_jax.checkpoints import reference_import
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.training import state as state_lib

# The reference tensor whose first axis is each group's token count.
_COUNT_TENSORS = {'qkv': 'sequential.2.attention.query.key_param_tokens',
                  'proj': 'sequential.2.attention.proj.key_param_tokens',
                  'ffn': 'sequential.2.mlp.key_param_tokens'}


@dataclasses.dataclass
class Source:
  """An opened source, before any parameter is placed."""
  text: str                        # as the user gave it
  path: str
  step: int | None                 # the workdir's checkpoint (None for a file)
  model: dict                      # the source's model config
  vocab_size: int                  # its (padded) vocabulary
  meta: dict | None = None         # a workdir checkpoint's metadata
  state_dict: dict | None = None   # a file's tensors, by reference name

  @property
  def is_file(self) -> bool:
    return self.state_dict is not None

  def describe(self) -> dict:
    return {'path': self.path, 'step': self.step} if self.step is not None else {'path': self.path}


def split_step(text: str) -> tuple[str, int | None]:
  """'PATH:STEP' → (absolute PATH, STEP); anything else → (absolute path, None)."""
  path, sep, tail = text.rpartition(':')
  if sep and tail.isdigit() and path:
    return os.path.abspath(os.path.expanduser(path)), int(tail)
  return os.path.abspath(os.path.expanduser(text)), None


def open_source(text: str, cfg, step: int | None = None) -> Source:
  """Opens `text` (a workdir, WORKDIR:STEP, or a released file) against cfg's model; `step` is the
  explicit checkpoint step when the caller has its own flag for it."""
  path, given = split_step(text)
  step = given if given is not None else step
  if os.path.isfile(path):
    if step is not None:
      raise UserError(f'{text}: a checkpoint file has no steps')
    state_dict = reference_import.read_state_dict(path)
    model = cfg.model.to_dict()
    for group, name in _COUNT_TENSORS.items():
      if name in state_dict and np.ndim(state_dict[name]) == 2:
        model[f'n_{group}'] = int(np.shape(state_dict[name])[0])
      model[f'n_ref_{group}'] = 0   # the reference always uses τ = √n
    emb = state_dict.get('sequential.0.word_embeddings.weight')
    vocab = int(np.shape(emb)[0]) if emb is not None else 0
    return Source(text, path, None, model, vocab, state_dict=state_dict)
  if not os.path.isdir(path):
    raise UserError(f'{text}: neither a workdir nor a checkpoint file')
  mngr = store.manager(path, create=False)
  step = store.choose_step(mngr, step)
  if step is None:
    raise UserError(f'{text}: no checkpoint in this workdir')
  meta = store.read_meta(mngr, step)
  return Source(text, path, step, meta['config']['model'], int(meta['vocab_size']), meta=meta)


def read_params(source: Source, spec: state_lib.StateSpec, targets=None, expected=None):
  """The source's parameters in spec's shapes and shardings, or (growth) in `targets`, a params tree
  of abstract arrays, from a source whose parameters have the shapes `expected` gives (zero-padded
  where a target is longer)."""
  targets = state_lib.abstract_targets(spec)['params'] if targets is None else targets
  if not source.is_file:
    mngr = store.manager(source.path, create=False)
    return store.restore(mngr, source.step, {'params': targets},
                              expected=None if expected is None else {'params': expected})['params']
  if source.vocab_size and source.vocab_size != spec.vocab_size:
    raise UserError(f'{source.text} has a vocabulary of {source.vocab_size}, the config '
                    f'{spec.vocab_size} (model.vocab_size, or the tokenizer\'s size padded to 128)')
  flat = reference_import.to_params(source.state_dict, ml_collections.ConfigDict(source.model), spec.vocab_size)
  wanted = None if expected is None else {store.path_string(path): leaf.shape for path, leaf in
                                          jax.tree_util.tree_flatten_with_path(expected)[0]}

  def place(path, target):
    name = store.path_string(path)
    array = flat[name]
    want = target.shape if wanted is None else wanted[name]
    if array.shape != tuple(want):
      raise UserError(f'{source.text}: {name} is {list(array.shape)}, the model wants {list(want)}')
    if array.shape != target.shape:     # growth: zeros past the source's positions
      array = np.pad(array, [(0, size - have) for have, size in zip(array.shape, target.shape)])
    return jax.make_array_from_callback(target.shape, target.sharding, lambda index: array[index])

  return jax.tree_util.tree_map_with_path(place, targets)

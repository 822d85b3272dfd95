"""Where each element of a grown array comes from, when a model grows in depth, width and tokens at once.

A growth maps a checkpoint of model config S onto config B. Each axis of each array is an `Axis`: its
positions p < copies·src are copy p // src of source position p % src, and the positions past that are
new. The layer axis of the stacked blocks is a map instead: grown block → source block, or new.
- tokens (n_qkv, n_proj, n_ffn, and the dense MLP's hidden units beyond k × the source's): new rows
  are appended; their values and keys are drawn by the growth policy (growth.py).
- width d → k·d, k an integer, and num_heads → k·num_heads: heads keep their size, so the rotary dims
  and the 1/√head_dim scale stay. The residual stream becomes k copies [x, x, …]. A non-parametric
  LayerNorm of the copies is the copies of the LayerNorm (same mean, same variance), and a duplicated q,
  k or v is k copies of every head. An axis that writes into a duplicated vector (value tokens, the
  embedding as the input table, a dense kernel's output axis) repeats its source weights (`split`
  False). An axis that reads one (key tokens, a dense kernel's input axis, the final LayerNorm's scale
  and bias, which feed the tied head) splits them (`split` True): each copy holds 1/k of the weight,
  so scores and logits are unchanged. The split copies of a key table or a dense kernel also get noise
  that sums to zero over the copies (growth.width_noise), so the function stays exact but the copies'
  gradients differ, and training breaks the symmetry.
- depth L → L′: the source blocks keep their order; the new ones come after them
  (growth.depth_placement='append') or spread between them ('interleave': stacking). A new block's
  output projections (the proj and FFN value tokens, the dense proj and down kernels) are zero, so with
  its pre-norm residual form it adds nothing; its other tables are drawn as at init, so gradients reach
  it from the first step (the zero outputs get gradient, and after one step everything does).

Adam moments are mapped as the gradients are: a copy of a repeated axis sees 1/k of the source's
gradient (the k copies of the stream it writes share the downstream gradient), a copy of a split axis
sees all of it. So per repeated axis the first moment is divided by k and the second by k², and new
positions start at 0. Each copy's first Adam update then equals the source's.
"""
import dataclasses

import numpy as np

from tokenformer_jax.model import transformer as model_lib

PLACEMENTS = ('append', 'interleave')
# Axis kinds of every parameter, by its name (the last path parts): 'tokens' a token axis, 'mlp_*' the
# dense MLP's hidden axis, 'split'/'dup' a d-sized axis that splits or repeats its weights, 'vocab' fixed.
_PATTENTION_AXES = {'key_tokens': ('tokens', 'split'), 'value_tokens': ('tokens', 'dup')}
_DENSE_AXES = {'up': ('split', 'mlp_dup'), 'down': ('mlp_split', 'dup')}
_TOP_AXES = {'embedding': ('vocab', 'dup'), 'final_norm_scale': ('split',),
             'final_norm_bias': ('split',)}
# A new block's tables that must be zero: what the block writes into the residual stream.
_BLOCK_OUTPUTS = {('proj', 'value_tokens'), ('mlp', 'value_tokens'), ('proj', 'kernel'),
                  ('down', 'kernel')}


@dataclasses.dataclass(frozen=True)
class Axis:
  src: int                # the source's size
  grown: int              # at least copies·src; the positions past copies·src are new
  copies: int = 1
  split: bool = False     # copies share the source's weight (1/k each) rather than repeat it

  def source_positions(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(source position, is new) of grown positions; a new position's source position is 0."""
    new = positions >= self.copies * self.src
    return np.where(new, 0, positions % self.src), new

  @property
  def is_padding(self) -> bool:
    """The grown axis is the source's with new positions after it (Orbax can pad it while reading)."""
    return self.copies == 1


@dataclasses.dataclass(frozen=True)
class Growth:
  """What a growth changes: the width factor, where the source blocks go, the old and new counts."""
  width: int                       # k
  layers: tuple[int, ...]          # the grown position of each source block
  num_layers: int                  # L′
  counts: dict                     # group → (old, new) token counts
  mlp: tuple[int, int]             # the dense MLP's hidden width (old, new)

  def block_sources(self) -> np.ndarray:
    """The source block of each grown block, −1 for a new one."""
    out = np.full(self.num_layers, -1)
    out[list(self.layers)] = np.arange(len(self.layers))
    return out

  @property
  def keeps_block_order(self) -> bool:
    """Source block i stays at position i (the new blocks, if any, come after them all)."""
    return self.layers == tuple(range(len(self.layers)))

  def record(self) -> dict:
    """What the grown checkpoint's meta keeps (grown_from), for freeze_old and for the record."""
    return {'counts': {g: old for g, (old, _) in self.counts.items()}, 'width': self.width,
            'layers': list(self.layers), 'mlp_dim': self.mlp[0]}


def mlp_width(m) -> int:
  return int(m['mlp_dim']) or 4 * int(m['d_model'])


def placement(old: int, new: int, how: str) -> tuple[int, ...]:
  """Grown positions of the source blocks: `append` keeps them first; `interleave` follows source block
  i with ⌈(i+1)·E/L⌉ − ⌈i·E/L⌉ of the E = new − old new blocks: one after each when the depth
  doubles, spread between them (from the first on) when it grows less."""
  if how == 'append':
    return tuple(range(old))
  if how != 'interleave':
    raise ValueError(f'unknown depth placement {how!r}')
  extra, out, position = new - old, [], 0
  for i in range(old):
    out.append(position)
    position += 1 + -(-(i + 1) * extra // old) - -(-i * extra // old)
  return tuple(out)


def from_configs(model_s, m_b, how: str) -> Growth:
  """The growth from source model config `model_s` (a dict or ConfigDict) to `m_b`; the rules of what
  may change are checked before (run_record.growth_differences)."""
  width = int(m_b['d_model']) // int(model_s['d_model'])
  counts = {g: (int(model_s[f'n_{g}']), int(m_b[f'n_{g}'])) for g in model_lib.TOKEN_GROUPS}
  return Growth(width, placement(int(model_s['num_layers']), int(m_b['num_layers']), how),
                int(m_b['num_layers']), counts, (mlp_width(model_s), mlp_width(m_b)))


def from_record(record: dict, m_b) -> Growth:
  """The Growth of a grown checkpoint's meta (grown_from); a record from before depth and width could
  grow names only the counts."""
  L = int(m_b['num_layers'])
  width = int(record.get('width', 1))
  counts = {g: (int(record['counts'][g]), int(m_b[f'n_{g}'])) for g in model_lib.TOKEN_GROUPS}
  mlp = (int(record.get('mlp_dim', mlp_width(m_b) // width)), mlp_width(m_b))
  return Growth(width, tuple(record.get('layers', range(L))), L, counts, mlp)


def array_axes(path: tuple[str, ...], g: Growth, d_src: int) -> tuple[Axis, ...]:
  """The axes of a parameter (its layer axis left out) under growth g; d_src: the source's d_model."""
  if path[-1] in _TOP_AXES:
    kinds = _TOP_AXES[path[-1]]
  elif path[-1] in _PATTENTION_AXES:
    kinds = _PATTENTION_AXES[path[-1]]
  elif path[-2] in _DENSE_AXES:
    kinds = _DENSE_AXES[path[-2]]
  else:
    kinds = ('split', 'dup')    # a dense q, k, v or proj kernel [d_in, d_out]
  k, d = g.width, d_src
  axes = []
  for kind in kinds:
    if kind == 'tokens':
      old, new = g.counts[model_lib.token_group(path)]
      axes.append(Axis(old, new))
    elif kind.startswith('mlp'):
      axes.append(Axis(g.mlp[0], g.mlp[1], k, kind == 'mlp_split'))
    elif kind == 'vocab':
      axes.append(None)         # filled in from the shape: the vocabulary never changes
    else:
      axes.append(Axis(d, k * d, k, kind == 'split'))
  return tuple(axes)


def is_stacked(path: tuple[str, ...]) -> bool:
  return path[0] == 'blocks'


def writes_residual(path: tuple[str, ...]) -> bool:
  """Whether this table is what a block adds to the residual stream (zero in a new block)."""
  owner = path[-2] if path[-1] in model_lib.TOKEN_TABLES or path[-1] == 'kernel' else ''
  return (owner, path[-1]) in _BLOCK_OUTPUTS


def init_std(path: tuple[str, ...], m, value_std: float) -> float:
  """The std model/transformer.py draws this table with (for new blocks and as the scale of the width noise)."""
  if path[-1] == 'value_tokens' or (path[-1] == 'kernel' and path[-2] in ('proj', 'down')):
    return value_std
  if path[-1] in ('key_tokens', 'kernel'):
    return m.key_init_std
  return 0.0


def new_unit_std(path: tuple[str, ...], m, value_std: float, policy: str) -> float:
  """The std of new tokens (new dense hidden units) in a source block: under `exact` what reads the
  input (keys, the up kernel) is 0, so a new unit's output is GELU(0)·v = 0; values are drawn."""
  reads_input = path[-1] == 'key_tokens' or path[-2] == 'up'
  if reads_input:
    return 0.0 if policy == 'exact' else m.key_init_std
  return value_std


def moment_scale(axes: tuple[Axis, ...], k: int) -> float:
  """The first moment's factor for this array (the second's is its square): 1/k per repeated axis."""
  repeated = sum(1 for a in axes if a is not None and a.copies > 1 and not a.split)
  return float(k) ** -repeated


def weight_scale(axes: tuple[Axis, ...], k: int) -> float:
  """The parameter's factor: 1/k per split axis (its copies sum to the source's weight)."""
  return float(k) ** -sum(1 for a in axes if a is not None and a.copies > 1 and a.split)


def old_masks(path: tuple[str, ...], shape: tuple[int, ...], g: Growth, d_src: int) -> tuple:
  """0/1 vectors, one per axis and shaped to broadcast, that mark the source's own positions (the first
  copy, the old tokens, the source blocks): freeze_old trains where their product is 0."""
  axes = array_axes(path, g, d_src)
  masks = []
  if is_stacked(path):
    masks.append(g.block_sources() >= 0)
  for axis, size in zip(axes, shape[len(masks):]):
    masks.append(np.ones(size, bool) if axis is None else np.arange(size) < axis.src)
  ndim = len(shape)
  return tuple(m.astype(np.float32).reshape([-1 if i == j else 1 for j in range(ndim)])
               for i, m in enumerate(masks))

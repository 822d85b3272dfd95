"""Building each grown array shard by shard, on the host that holds it, from the source's arrays.

The source is read by Orbax onto the destination's mesh in a *source layout* (`source_target`): an axis
that only gains positions at its end (tokens; layers when the new blocks are appended) is read at its
grown length with the grown sharding, Orbax zero-padding it; an axis that is tiled (width) is read at
its source length, sharded so that each device holds the source block its own grown shard copies (the
mesh axes it is split over are reshaped so that a minor sub-axis of G devices walks the G source blocks),
or whole where no such split exists. Then `compose` builds each device's grown shard from the source
shard on the same device: copy, scale, noise, new positions. Nothing is gathered across devices or
hosts, and nothing is compiled.

Random values (new positions, width noise) come from `normals`, a stream keyed by the seed, the array
and the block and cut into independently drawn chunks: any range is drawn directly, so every shard
draws only its own rows, and the values depend neither on the mesh nor on the process count.
"""
import concurrent.futures
import dataclasses
import functools
import os
import zlib

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tokenformer_jax.training.growth_layout import Axis

NEW, NOISE = 1, 2       # the two random streams of an array


CHUNK = 1 << 14          # values per independently addressable piece of a random stream


def normals(seed: int, stream: int, start: int, count: int) -> np.ndarray:
  """Standard normals start … start+count−1 of a stream, float32. The stream is cut into chunks of CHUNK
  values, each drawn by its own Philox generator (keyed by seed and stream, the chunk's index in the
  counter's high word, so chunks never overlap) with NumPy's ziggurat sampler: any range is drawn from
  the chunks it touches, so the values do not depend on how the stream is split."""
  first, end = start // CHUNK, (start + count + CHUNK - 1) // CHUNK
  out = np.empty((end - first) * CHUNK, np.float32)
  key = np.array([seed, stream], np.uint64)
  for i, chunk in enumerate(range(first, end)):
    generator = np.random.Generator(np.random.Philox(key=key, counter=[0, 0, chunk, 0]))
    generator.standard_normal(dtype=np.float32, out=out[i * CHUNK:(i + 1) * CHUNK])
  return out[start - first * CHUNK:][:count]


def stream_id(path: str, purpose: int, layer: int) -> int:
  """A stream per (array, purpose, block): the array's path hashed, so it does not depend on the tree."""
  return (zlib.crc32(path.encode()) << 32) | (purpose << 28) | layer


@dataclasses.dataclass(frozen=True)
class Leaf:
  """How one grown array (a parameter or one of its Adam moments) is made."""
  path: str                       # the parameter's path ('blocks/mlp/key_tokens'), also for a moment
  axes: tuple                     # growth_layout.Axis per axis after the layer axis (None: unchanged)
  blocks: np.ndarray | None       # stacked: the source block of each grown block (−1 new); else None
  keeps_order: bool = True        # stacked: source block i stays at i
  scale: float = 1.0              # on every copied value
  noise_std: float = 0.0          # of the width noise on the split axis (parameters only)
  new_block_std: float = 0.0      # of every value of a new block
  new_unit_std: float = 0.0       # of new positions (tokens, hidden units) in a source block
  seed: int = 0

  @property
  def is_identity(self) -> bool:
    return (self.scale == 1.0 and all(a is None or (a.is_padding and a.src == a.grown) for a in self.axes)
            and (self.blocks is None or (self.keeps_order and bool((self.blocks >= 0).all()))))


def _full_axes(leaf: Leaf, shape) -> list:
  """(kind, Axis) per array axis: ('layers', None), ('axis', Axis) or ('same', None)."""
  out = [('layers', None)] if leaf.blocks is not None else []
  return out + [('same', None) if a is None else ('axis', a) for a in leaf.axes]


def source_target(leaf: Leaf, shape: tuple, sharding: NamedSharding) -> tuple[tuple, NamedSharding]:
  """The shape and sharding Orbax reads the source array into (see the module docstring)."""
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  mesh, out_shape, groups = sharding.mesh, [], []
  for (kind, axis), size, entry in zip(_full_axes(leaf, shape), shape, spec):
    if kind == 'layers' and not leaf.keeps_order:
      out_shape.append(int((leaf.blocks >= 0).sum()))
      groups.append(1)
    elif kind == 'axis' and not axis.is_padding:
      out_shape.append(axis.src)
      groups.append(_group(axis, size, _shards(mesh, entry)))
    else:
      out_shape.append(size)
      groups.append(None)
  return tuple(out_shape), _split_sharding(mesh, spec, groups)


def _names(entry) -> tuple:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _shards(mesh: Mesh, entry) -> int:
  return int(np.prod([mesh.shape[n] for n in _names(entry)]))


def _group(axis: Axis, grown_size: int, shards: int) -> int:
  """G: the device at shard t of a tiled axis copies source block t mod G (1: the whole source axis)."""
  width = grown_size // shards
  if width <= axis.src and axis.src % width == 0 and shards % (axis.src // width) == 0:
    return axis.src // width
  return 1


def _split_sharding(mesh: Mesh, spec: list, groups: list) -> NamedSharding:
  """A sharding over `mesh` with, per array axis, its spec kept (None), replicated (1) or over the minor
  G devices of its mesh axes (G > 1), for which a mesh axis is split into (major, minor) sub-axes."""
  splits, new_spec = {}, []
  for entry, group in zip(spec, groups):
    names = _names(entry)
    if group is None:
      new_spec.append(entry)
      continue
    kept, size = [], 1
    for name in reversed(names):
      if size == group:
        break
      axis_size = mesh.shape[name]
      if group % (size * axis_size) == 0:
        kept.insert(0, name)
        size *= axis_size
      elif axis_size % (group // size) == 0 and group % size == 0:
        splits[name] = group // size
        kept.insert(0, f'{name}_minor')
        size = group
      else:
        break
    new_spec.append(tuple(kept) if size == group and group > 1 else None)
  if splits:
    mesh = _split_mesh(mesh, tuple(sorted(splits.items())))
  return NamedSharding(mesh, PartitionSpec(*new_spec))


@functools.lru_cache(maxsize=32)
def _split_mesh(mesh: Mesh, splits: tuple) -> Mesh:
  """mesh with each axis named in splits ((name, minor size), …) split into name_major × name_minor."""
  splits = dict(splits)
  names, sizes = [], []
  for name, size in zip(mesh.axis_names, mesh.devices.shape):
    if name in splits:
      names += [f'{name}_major', f'{name}_minor']
      sizes += [size // splits[name], splits[name]]
    else:
      names.append(name)
      sizes.append(size)
  return Mesh(mesh.devices.reshape(sizes), tuple(names))


@functools.lru_cache(maxsize=1)
def _pool() -> concurrent.futures.ThreadPoolExecutor:
  """Threads for building a table's shards: NumPy releases the GIL in the copies and the random draws,
  so the host's cores share the work."""
  return concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix='growth')


def compose(leaf: Leaf, source: jax.Array, shape: tuple, sharding: NamedSharding) -> jax.Array:
  """The grown array, each device's shard built from the source shard on the same device."""
  if leaf.is_identity and source.shape == tuple(shape):
    return source
  by_device = {s.device: s for s in source.addressable_shards}
  wanted = {}      # each distinct grown shard once: ranges → the devices that hold it
  for device, index in sharding.addressable_devices_indices_map(tuple(shape)).items():
    wanted.setdefault(tuple(range(size)[sl] for size, sl in zip(shape, index)), []).append(device)
  build = lambda item: _block(leaf, by_device[item[1][0]], item[0], shape)
  built = dict(zip(wanted, (_pool().map if len(wanted) > 1 else map)(build, wanted.items())))
  arrays = {}
  for ranges, devices in wanted.items():
    block = built.pop(ranges)
    for i, device in enumerate(devices):
      if isinstance(block, jax.Array):      # as read: every device holding it has its own copy
        arrays[device] = by_device[device].data
      else:                                 # the first device may take the host block itself
        arrays[device] = jax.device_put(block, device, may_alias=i == 0)
  return jax.make_array_from_single_device_arrays(
      tuple(shape), sharding, [arrays[d] for d in sharding.addressable_devices_indices_map(tuple(shape))])


def _block(leaf: Leaf, shard, ranges: tuple, shape: tuple):
  """One grown shard: the source shard's values taken axis by axis, scaled, with noise, and the new
  positions written. A shard Orbax already read as it must be (only zero padding new) is used as is."""
  local, news = [], []
  for i, ((kind, axis), positions) in enumerate(zip(_full_axes(leaf, shape), ranges)):
    p = np.arange(positions.start, positions.stop)
    start = shard.index[i].start or 0
    if kind == 'layers':
      is_new = leaf.blocks[p] < 0
      src = p if leaf.keeps_order else np.where(is_new, start, leaf.blocks[p])
    elif kind == 'axis' and not axis.is_padding:
      src, is_new = axis.source_positions(p)
      src = np.where(is_new, start, src)
    else:         # read as it is grown: new positions hold Orbax's zero padding
      src, is_new = p, (p >= axis.src) if kind == 'axis' else np.zeros(len(p), bool)
    local.append(src - start)
    news.append(is_new)
  as_read = all(np.array_equal(idx, np.arange(size)) for idx, size in zip(local, shard.data.shape))
  if as_read and leaf.scale == 1.0 and not leaf.noise_std and not _draws(leaf, news):
    return shard.data                  # the source's values, and zeros where new: no copy
  scale = np.asarray(leaf.scale, shard.data.dtype)
  if any(n.all() for n in news):       # nothing of the source in this shard
    out = np.zeros([len(r) for r in ranges], shard.data.dtype)
  elif as_read:
    out = np.array(shard.data) if leaf.scale == 1.0 else np.asarray(shard.data) * scale
  else:
    out = _taken(np.asarray(shard.data), local, scale)
  if leaf.noise_std:
    _add_noise(out, leaf, ranges, shape)
  if any(n.any() for n in news):
    _write_new(out, leaf, ranges, shape, news)
  return out


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
  """idx as contiguous runs [a, b) (a width copy is a few long runs)."""
  if not len(idx):
    return [(0, 0)]
  breaks = np.flatnonzero(np.diff(idx) != 1) + 1
  return [(int(run[0]), int(run[-1]) + 1) for run in np.split(idx, breaks)]


def _taken(x: np.ndarray, local: list, scale: np.ndarray) -> np.ndarray:
  """x at the positions `local` (one index array per axis), times scale, as a new array: each axis of
  one run is a view, and the last axis of several runs is copied slice by slice with the scale applied
  on the way, so the values are written once."""
  runs = [_runs(idx) for idx in local]
  last = max((i for i, r in enumerate(runs) if len(r) > 1), default=None)
  for i, axis_runs in enumerate(runs):
    if i != last and len(axis_runs) == 1:
      x = x[(slice(None),) * i + (slice(*axis_runs[0]),)]
    elif i != last:
      x = np.concatenate([x[(slice(None),) * i + (slice(a, b),)] for a, b in axis_runs], axis=i)
  if last is None:
    return x * scale if scale != 1 else np.array(x)
  out = np.empty(x.shape[:last] + (len(local[last]),) + x.shape[last + 1:], x.dtype)
  at = 0
  for a, b in runs[last]:
    np.multiply(x[(slice(None),) * last + (slice(a, b),)], scale,
                out=out[(slice(None),) * last + (slice(at, at + b - a),)])
    at += b - a
  return out


def _draws(leaf: Leaf, news: list) -> bool:
  """Whether this shard has new positions with random values (else they are zero)."""
  if leaf.blocks is None:
    return False
  new_blocks, in_old_blocks = news[0], any(n.any() for n in news[1:])
  return bool((leaf.new_block_std and new_blocks.any()) or
              (leaf.new_unit_std and in_old_blocks and not new_blocks.all()))


def _layer_rows(leaf: Leaf, purpose: int, layer: int, rows: range, width: int) -> np.ndarray:
  """Rows of one block's [rows, width] stream (a stacked array's last two axes, whole rows)."""
  stream = stream_id(leaf.path, purpose, layer)
  return normals(leaf.seed, stream, rows.start * width, len(rows) * width).reshape(len(rows), width)


def _write_new(out: np.ndarray, leaf: Leaf, ranges: tuple, shape: tuple, news: list) -> None:
  """Writes the new positions of a stacked [L, rows, cols] shard in place: new blocks at new_block_std,
  new tokens or units of a source block (the last rows or columns) at new_unit_std, or zeros."""
  layers, rows, cols = ranges
  new_blocks, new_rows, new_cols = news

  def values(std, layer, row_range):
    if not std:
      return 0.0
    return std * _layer_rows(leaf, NEW, layer, row_range, shape[2])[:, cols.start:cols.stop]

  for i, layer in enumerate(layers):
    if new_blocks[i]:
      out[i] = values(leaf.new_block_std, layer, rows)
      continue
    if new_rows.any():
      first = int(np.argmax(new_rows))
      out[i, first:] = values(leaf.new_unit_std, layer, range(rows.start + first, rows.stop))
    if new_cols.any():
      first = int(np.argmax(new_cols))
      out[i, :, first:] = (values(leaf.new_unit_std, layer, rows)[:, first:] if leaf.new_unit_std
                           else 0.0)


@functools.lru_cache(maxsize=8)
def _zero_sum_basis(k: int) -> np.ndarray:
  """[k, k−1], orthonormal columns orthogonal to (1, …, 1) (Helmert's): it maps k−1 independent
  normals to k values that sum to 0, each of variance (k−1)/k. For k = 2: (z, −z)/√2."""
  basis = np.zeros((k, k - 1), np.float32)
  for j in range(1, k):
    basis[:j, j - 1] = 1.0 / np.sqrt(j * (j + 1))
    basis[j, j - 1] = -j / np.sqrt(j * (j + 1))
  return basis


def _add_noise(out: np.ndarray, leaf: Leaf, ranges: tuple, shape: tuple) -> None:
  """Adds to a stacked shard, in place, noise on the split axis that sums to zero over the k copies of
  every source position, so the copies of a weight still sum to the source weight. Its stream holds
  k−1 normals per source position: per grown row for a split last axis (key tokens [n, k·d]: row r's
  d·(k−1) values), per source row for a split row axis (a dense kernel [k·d_in, d_out′]: row q's
  d_out′·(k−1)). New blocks get none (_write_new writes them whole)."""
  layers, rows, cols = ranges
  row_axis, col_axis = leaf.axes
  split = col_axis if col_axis.split and col_axis.copies > 1 else row_axis
  k, s = split.copies, split.src
  basis_T = _zero_sum_basis(k).T
  std = np.float32(leaf.noise_std)
  p = np.arange(rows.start, rows.stop)
  old, q = p < k * s, p % s
  for i, layer in enumerate(layers):
    if leaf.blocks[layer] < 0:
      continue
    if split is col_axis:
      z = _layer_rows(leaf, NOISE, layer, rows, s * (k - 1)).reshape(len(rows), s, k - 1)
      noise_RxSxK = z @ basis_T if k > 2 else None    # k = 2: each copy's noise is one product
      for j in range(k):              # copy j: the grown columns j·s … (j+1)·s − 1
        low, high = max(cols.start, j * s), min(cols.stop, (j + 1) * s)
        if low < high:
          source_cols = slice(low - j * s, high - j * s)
          noise = (z[:, source_cols, 0] * basis_T[0, j] if noise_RxSxK is None
                   else noise_RxSxK[:, source_cols, j])
          out[i, :, low - cols.start:high - cols.start] += noise * std
    elif old.any():
      low, high = int(q[old].min()), int(q[old].max()) + 1
      z = _layer_rows(leaf, NOISE, layer, range(low, high), shape[2] * (k - 1))
      noise = z.reshape(high - low, shape[2], k - 1) @ basis_T           # [Q, d_out′, k]
      picked = noise[np.clip(q - low, 0, high - low - 1), :, np.minimum(p // s, k - 1)]
      out[i] += np.where(old[:, None], picked, 0.0)[:, cols.start:cols.stop] * std

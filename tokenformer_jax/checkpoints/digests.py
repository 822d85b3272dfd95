"""Array digests: a checksum of every saved array, written at save and checked after restore.

Orbax and TensorStore catch a truncated file or broken metadata, but nothing checks the array bytes:
Orbax 0.12 writes zarr v2 chunks, which have no checksum, and offers no option to add one (its zarr v3
layout checksums only the shard index). Damaged bytes therefore restore as other numbers: NaN losses,
garbage samples, a run that diverges at its next step. A digest of each array, saved as one more item
of the checkpoint (committed with it) and compared after every restore, turns that into the
corrupt-checkpoint error.

The digest of an array is the sum, modulo 2^32, of a hash of each element's bits and its global index.
A sum does not depend on the order of its terms, so the digest does not depend on the sharding: it is
one jitted reduction over the whole state on the devices (every process taking part), no array is
gathered onto one host, and a checkpoint restored onto another mesh checks against it. It detects
damage, not tampering (it is no cryptographic hash): damaged elements leave the digest unchanged with
probability about 2^-32, as with a CRC-32.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 1
_GOLDEN = 0x9E3779B9   # 2^32 / golden ratio: spreads consecutive indices over all bits
_FOLD = 16


def _fmix32(h):
  """MurmurHash3's finaliser: every input bit flips each output bit with probability about 1/2."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _as_uint32(x):
  """The element bits, widened to uint32 (4-byte types bitcast, narrower ones zero-extended)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = x.dtype.itemsize
  if width not in (1, 2, 4):
    raise TypeError(f'no digest for {x.dtype} arrays')
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _hashes(x, extent: tuple):
  """Each element's bits hashed with its row-major index in `extent` (the saved shape); 0 outside it
  (a grown token table's new rows were not saved). Elementwise, so a sharded x stays as it is sharded."""
  coords = [jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) for axis in range(x.ndim)]
  index, stride = jnp.zeros(x.shape, jnp.uint32), 1
  for axis in reversed(range(x.ndim)):
    index = index + coords[axis] * jnp.uint32(stride % 2**32)
    stride *= extent[axis]
  h = _fmix32(_as_uint32(x) ^ (index * jnp.uint32(_GOLDEN)))
  if tuple(extent) != tuple(x.shape):
    inside = functools.reduce(jnp.logical_and, [c < n for c, n in zip(coords, extent)])
    h = jnp.where(inside, h, jnp.uint32(0))
  return h


def _fold(v):
  """The uint32 sum of an array on one device, taken _FOLD rows of axis 0 at a time.

  XLA's CPU backend rewrites a long integer reduction into a reduce-window over a materialised copy of
  its input, several times slower than the hash itself; a reduction over a short axis stays fused with
  the elementwise work that feeds it. The barrier keeps each step from being fused into the next (which
  would bring the long reduction back). The sum is exact, so the steps change nothing but the speed.
  Not for sharded arrays: padding and reshaping a sharded axis could make XLA gather it."""
  while v.ndim > 0:
    rows = v.shape[0]
    if rows > _FOLD:
      v = jnp.pad(v, [(0, -rows % _FOLD)] + [(0, 0)] * (v.ndim - 1))   # zeros add nothing
      v = jnp.sum(v.reshape(v.shape[0] // _FOLD, _FOLD, *v.shape[1:]), axis=1, dtype=jnp.uint32)
    else:
      v = jnp.sum(v, axis=0, dtype=jnp.uint32)
    v = jax.lax.optimization_barrier(v)
  return v


@functools.partial(jax.jit, static_argnums=(1, 2))
def _digest(x, extent: tuple, one_device: bool):
  """uint32: the sum of _hashes. A sharded array is summed where it lies (each device its part, then
  one all-reduce of a scalar), never gathered."""
  h = _hashes(x, extent)
  return _fold(h) if one_device else jnp.sum(h, dtype=jnp.uint32)


def _on_one_device(x) -> bool:
  return not isinstance(x, jax.Array) or len(x.sharding.device_set) == 1


def compute(arrays: dict, extents: dict | None = None) -> dict[str, str]:
  """{name: 8 hex digits} of every array of {name: array}; `extents` ({name: shape}) digests only the
  leading part of an array. Every process must call it (the reduction spans all devices)."""
  extents, out = extents or {}, {}
  for name, x in arrays.items():
    # one jit per shape (shared by the parameters and their Adam moments); each waited for before the
    # next starts, so no two programs' collectives are in flight together (dispatched all at once, a
    # run on 4 CPU devices aborted in one)
    digest = _digest(x, tuple(extents.get(name, np.shape(x))), _on_one_device(x))
    out[name] = f'{int(np.asarray(digest.addressable_shards[0].data)):08x}'   # replicated: here whole
  return out


def record(arrays: dict) -> dict:
  """What is saved beside {name: array}: each array's digest, shape and dtype."""
  digests = compute(arrays)
  return {'format': FORMAT,
          'arrays': {name: {'digest': digests[name], 'shape': list(np.shape(x)),
                            'dtype': str(np.dtype(x.dtype))} for name, x in arrays.items()}}


def mismatches(saved: dict, arrays: dict) -> list[str]:
  """Names of the arrays of {name: array} whose values differ from the saved record's digests (each
  compared over its saved shape); every name must be in the record."""
  saved = saved['arrays']
  missing = sorted(set(arrays) - set(saved))
  if missing:
    raise ValueError(f'the digest record lacks {missing[:3]}')
  now = compute(arrays, {name: tuple(saved[name]['shape']) for name in arrays})
  return [name for name, digest in now.items() if digest != saved[name]['digest']]

"""Export to the reference format: a workdir's checkpoint → one .safetensors file in the GPT-NeoX
sequential naming that reference_import.py reads, so the reference PyTorch code loads it with
`load_state_dict(strict=True)`.

  python -m tokenformer_jax.main --mode=export --config=... --workdir=DIR --export_file=OUT.safetensors \
      [--export_dtype=bfloat16] [--restore_step=N]

Any checkpoint (trained, grown, imported; saved on any mesh, by any number of processes) is restored
onto this run's mesh, then written one tensor at a time: each of our stacked [L, n, d] tables is gathered
whole (the only thing held whole), split into the reference's per-layer tensors and appended to the file,
whose header (names, dtypes, shapes, offsets) is known before any array is read. Only process 0
writes, to a temporary name renamed at the end.

The file holds the parameters only: the reference registers its rotary `attention.rotary_emb.inv_freq`
buffers as non-persistent unless it runs with `rotary_save_freqs_buffer` (default off), so its strict load
refuses them. `--export_rotary_buffers` adds them, for a reference model built with that option. The
header's `__metadata__` says what the file is: the model config (JSON), the padded vocab, the step, the
tokenizer's sha256 (when the checkpoint records one) and the tokenformer_jax version.

A model with τ frozen by exact growth (n_ref_* ≠ n_*) computes Θ with τ = √n_ref, which the reference
code cannot express (it always uses τ = √n). It is refused unless `allow_tau_change`, which exports the
same parameters and reports how far the logits move on a sample when τ becomes √n.
"""
import importlib.metadata
import json
import os
import struct

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from tokenformer_jax.checkpoints import reference_import
from tokenformer_jax.checkpoints import run_record
from tokenformer_jax.checkpoints import store
from tokenformer_jax.errors import UserError
from tokenformer_jax.inference import loading
from tokenformer_jax.model import transformer as model_lib
from tokenformer_jax.training import state as state_lib

DTYPES = {'float32': (np.float32, 'F32'), 'bfloat16': (ml_dtypes.bfloat16, 'BF16')}


def _layout(m, vocab: int, rotary_buffers: bool) -> list[tuple[str, str, int | None, tuple]]:
  """(reference name, our params path or 'inv_freq', layer, shape), in the file's order; the rotary
  buffers only when asked (`rotary_buffers`)."""
  by_path = {}
  for name, (path, layer, shape) in reference_import.expected_names(m, vocab).items():
    by_path.setdefault(path, []).append((name, path, layer, shape))
  rows = []
  for path in sorted(by_path):
    rows += sorted(by_path[path], key=lambda r: (r[2] is not None, r[2] or 0, r[0]))
  if rotary_buffers:
    rot = reference_import.rotary_inv_freq(m)
    rows += [(f'sequential.{i + 2}.attention.rotary_emb.inv_freq', 'inv_freq', i, rot.shape)
             for i in range(m.num_layers)]
  return rows


def package_version() -> str:
  """The installed distribution's version (a checkout run without installing has none)."""
  try:
    return importlib.metadata.version('tokenformer_jax')
  except importlib.metadata.PackageNotFoundError:
    return 'unknown (not installed)'


def file_metadata(restored, model_cfg) -> dict[str, str]:
  """The safetensors `__metadata__` (string → string): what the file is and where it came from.
  model_cfg: the run's model config with the checkpoint's frozen τ (the model the parameters are of;
  run_record.for_inference has compared it with the checkpoint's). 'format': 'pt' is the key Hugging
  Face loaders look for in PyTorch-layout files."""
  meta = {'format': 'pt', 'tokenformer_jax_version': package_version(),
          'model_config': json.dumps(model_cfg.to_dict(), sort_keys=True),
          'vocab_size': str(restored.vocab_size), 'step': str(restored.step)}
  if restored.meta.get('tokenizer_sha256'):
    meta['tokenizer_sha256'] = restored.meta['tokenizer_sha256']
  return meta


def _header(rows, dtype_name: str, metadata: dict[str, str]) -> bytes:
  """The safetensors header: 8-byte little-endian length, then JSON names → dtype, shape, offsets
  (and `__metadata__`)."""
  itemsize = np.dtype(DTYPES[dtype_name][0]).itemsize
  table, offset = {'__metadata__': metadata}, 0
  for name, path, _, shape in rows:
    code = 'F32' if path == 'inv_freq' else DTYPES[dtype_name][1]
    size = int(np.prod(shape)) * (4 if path == 'inv_freq' else itemsize)
    table[name] = {'dtype': code, 'shape': list(shape), 'data_offsets': [offset, offset + size]}
    offset += size
  text = json.dumps(table, separators=(',', ':')).encode()
  text += b' ' * (-len(text) % 8)  # the data start aligned to 8 bytes
  return struct.pack('<Q', len(text)) + text


def _whole(x: jax.Array) -> np.ndarray:
  """x gathered whole onto every process (one tensor at a time; fully addressable: a copy)."""
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def logit_shift(restored, cfg) -> float:
  """Largest |Δ logit| / max |logit| on a fixed sample when τ goes from √n_ref to √n (cfg: with the
  checkpoint's frozen τ)."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(
      0, restored.vocab_size, (1, min(64, cfg.data.seq_len))), jnp.int32)
  plain = cfg.to_dict()
  for g in model_lib.TOKEN_GROUPS:
    plain['model'][f'n_ref_{g}'] = 0
  spec_plain = state_lib.make_spec(ml_collections.ConfigDict(plain), restored.vocab_size,
                                   restored.spec.mesh)
  frozen = nnx.merge(restored.graphdef, restored.params)(tokens)
  changed = nnx.merge(spec_plain.graphdef, restored.params)(tokens)
  return float(jnp.max(jnp.abs(changed - frozen)) / jnp.max(jnp.abs(frozen)))


def export(cfg, workdir: str, out_file: str, step: int | None = None, dtype: str = 'float32',
           allow_tau_change: bool = False, rotary_buffers: bool = False) -> str:
  """Writes the workdir's latest (or `step`) checkpoint as `out_file`; returns its path. `rotary_buffers`:
  also each layer's rotary inv_freq (for a reference built with rotary_save_freqs_buffer)."""
  if not out_file or not out_file.endswith('.safetensors'):
    raise UserError(f'--mode=export writes a .safetensors file: pass --export_file=OUT.safetensors '
                    f'(got {out_file or "nothing"})')
  if dtype not in DTYPES:
    raise UserError(f'--export_dtype={dtype}: choose one of {sorted(DTYPES)}')
  if cfg.model.kind != 'tokenformer':
    raise UserError(f'only TokenFormer models have the reference format; model.kind={cfg.model.kind!r}')
  out_file = os.path.abspath(os.path.expanduser(out_file))
  if not os.path.isdir(os.path.dirname(out_file)):
    raise UserError(f'no such folder for --export_file: {os.path.dirname(out_file)}')
  restored = loading.load(cfg, workdir, step)
  m = restored.spec.model_cfg
  cfg, why = run_record.for_export(restored.meta, cfg, restored.step, allow_tau_change)
  if why:
    logging.warning('%s: exporting as asked (--allow_tau_change); on a sample the logits move by up to '
                    '%.3g of their largest magnitude', why, logit_shift(restored, cfg))
  rows = _layout(m, restored.vocab_size, rotary_buffers)
  metadata = file_metadata(restored, cfg.model)
  flat = {store.path_string(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(restored.params)[0]}
  np_dtype = DTYPES[dtype][0]
  writer = jax.process_index() == 0
  tmp = f'{out_file}.tmp-{os.getpid()}'
  try:
    f = open(tmp, 'wb') if writer else None  # pylint: disable=consider-using-with
    if f:
      f.write(_header(rows, dtype, metadata))
    current_path, whole = None, None
    inv_freq = reference_import.rotary_inv_freq(m).astype(np.float32)
    for _, path, layer, _ in rows:
      if path == 'inv_freq':
        data = inv_freq
      else:
        if path != current_path:  # every process joins the gather; one table held at a time
          current_path, whole = path, _whole(flat[path])
        data = (whole if layer is None else whole[layer]).astype(np_dtype)
      if f:
        f.write(np.ascontiguousarray(data).tobytes())
    if f:
      f.close()
      os.replace(tmp, out_file)
  except BaseException:
    if writer and os.path.exists(tmp):
      os.remove(tmp)
    raise
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('tokenformer_jax.checkpoints.reference_export')
  if writer:
    logging.info('exported step %d of %s (%d tensors, %s) to %s', restored.step, workdir, len(rows), dtype,
                 out_file)
  return out_file

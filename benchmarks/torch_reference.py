"""The reference architecture's train step in PyTorch, timed on the same machine as `step.py`.

An independent PyTorch implementation of the reference GPU model (pre-norm blocks with non-affine LayerNorms,
q/k/v/proj/FFN Pattentions with the L2-norm → GELU softmax replacement, GPT-NeoX rotary on 25% of each
head, causal SDPA, final affine LayerNorm, tied head) and the same optimizer (global-norm clip 1.0, AdamW
with decay off for the final norm). It starts from the JAX model's initial parameters and checks that the
first loss equals ours, so the two step times measure the same computation.

Times eager mode and, unless --nocompile, torch.compile; prints a table and writes JSON. Our own train step
is timed too, alternating step by step with the eager one, so that the two see the same machine load
(this host's speed drifts by 10% between runs; the ratio from one run is what to compare).

  pip install torch==2.13.0         # the CPU wheel; not a dependency of the package
  python benchmarks/torch_reference.py --config=experiments/bench.py:b --steps=5 --json=/tmp/torch.json
  launch/with_tcmalloc.sh python benchmarks/torch_reference.py --config=experiments/tiny.py
"""
import json
import math
import os
import statistics
import time

from absl import flags
from ml_collections import config_flags

import harness

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tokenformer_jax.model import flops  # noqa: E402
from tokenformer_jax.runtime import sharding  # noqa: E402
from tokenformer_jax.training import state as state_lib  # noqa: E402
from tokenformer_jax.training import step as step_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment file (path.py[:arg]).',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per mode.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation happens here).')
_COMPILE = flags.DEFINE_bool('compile', True, 'Also time torch.compile.')
_THREADS = flags.DEFINE_integer('threads', 0, 'torch threads (0: one per CPU).')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results as JSON.')


def _torch_model(m, params_np):
  """The reference model as a torch.nn.Module holding copies of the JAX parameters."""
  import torch
  from torch import nn

  def pattention(x, keys, values, n):
    scores = x @ keys.t()
    scores = scores * (math.sqrt(n) / torch.linalg.vector_norm(scores, dim=-1, keepdim=True))
    return nn.functional.gelu(scores) @ values

  def tensor(a):
    return nn.Parameter(torch.from_numpy(np.array(a, np.float32)))

  class Reference(nn.Module):

    def __init__(self):
      super().__init__()
      self.embedding = tensor(params_np['embedding'])
      blocks = params_np['blocks']
      self.tables = nn.ParameterDict()
      for name in ('query', 'key', 'value', 'proj', 'mlp'):
        for part in ('key_tokens', 'value_tokens'):
          self.tables[f'{name}_{part}'] = tensor(blocks[name][part])    # [L, n, d]
      self.norm_scale = tensor(params_np['final_norm_scale'])
      self.norm_bias = tensor(params_np['final_norm_bias'])
      head_dim = m.d_model // m.num_heads
      self.rot = int(head_dim * m.rotary_pct) // 2 * 2
      self.heads, self.head_dim = m.num_heads, head_dim

    def rotary(self, x, cos, sin):
      r, half = self.rot, self.rot // 2
      x_rot, x_pass = x[..., :r], x[..., r:]
      rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
      return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)

    def forward(self, tokens):
      B, T = tokens.shape
      d = self.embedding.shape[1]
      inv_freq = 1.0 / (m.rotary_base ** (torch.arange(0, self.rot, 2, dtype=torch.float32) / self.rot))
      angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq
      angles = torch.cat([angles, angles], dim=-1)
      cos, sin = angles.cos()[None, None], angles.sin()[None, None]      # [1, 1, T, R]
      x = self.embedding[tokens]
      t = self.tables
      for i in range(m.num_layers):
        def proj(h, name):
          keys = t[f'{name}_key_tokens'][i]
          return pattention(h, keys, t[f'{name}_value_tokens'][i], keys.shape[0])
        h = nn.functional.layer_norm(x, (d,), eps=m.ln_eps)
        heads = lambda y: y.view(B, T, self.heads, self.head_dim).transpose(1, 2)   # [B, N, T, H]
        q = self.rotary(heads(proj(h, 'query')), cos, sin)
        k = self.rotary(heads(proj(h, 'key')), cos, sin)
        v = heads(proj(h, 'value'))
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + proj(attn.transpose(1, 2).reshape(B, T, d), 'proj')
        x = x + proj(nn.functional.layer_norm(x, (d,), eps=m.ln_eps), 'mlp')
      h = nn.functional.layer_norm(x, (d,), self.norm_scale, self.norm_bias, eps=m.ln_eps)
      return h @ self.embedding.t()

  return Reference()


def bench(cfg) -> list[dict]:
  import torch
  c = harness.of_kind(cfg, 'tokenformer')
  mesh = sharding.make_mesh(c.mesh)
  spec = state_lib.make_spec(c, c.model.vocab_size, mesh)
  state = state_lib.init_state(spec, c)
  tokens = np.random.default_rng(0).integers(
      0, c.model.vocab_size, (c.train.batch_size, c.data.seq_len + 1), dtype=np.int32)
  jax_step = step_lib.make_train_step(spec, c)
  params_np = jax.tree.map(np.asarray, jax.device_get(state['params']))
  batch = step_lib.global_batch(spec, c, tokens)
  state, jax_metrics = jax_step(state, batch)
  jax_loss = float(jax_metrics['loss'])
  for _ in range(_WARMUP.value):
    state, jax_metrics = jax_step(state, batch)
  jax.block_until_ready(jax_metrics)

  def timed_jax_step():
    nonlocal state
    start = time.perf_counter()
    state, metrics = jax_step(state, batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  o = c.optimizer
  inputs = torch.from_numpy(tokens[:, :-1].astype(np.int64))
  targets = torch.from_numpy(tokens[:, 1:].astype(np.int64))
  step_flops = flops.train_flops_per_token(c.model, c.model.vocab_size, c.data.seq_len) * inputs.numel()
  rows = []
  for mode in ('eager', 'compile') if _COMPILE.value else ('eager',):
    model = _torch_model(c.model, params_np)
    no_decay = [model.norm_scale, model.norm_bias]
    decay = [p for p in model.parameters() if all(p is not q for q in no_decay)]
    opt = torch.optim.AdamW([{'params': decay}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=o.lr, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)

    def loss_of(model, inputs, targets):
      logits = model(inputs)
      return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    forward = torch.compile(loss_of) if mode == 'compile' else loss_of

    def train_step():
      opt.zero_grad(set_to_none=True)
      loss = forward(model, inputs, targets)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
      opt.step()
      return loss.detach()

    start = time.perf_counter()
    first_loss = float(train_step())
    first_s = time.perf_counter() - start
    if abs(first_loss - jax_loss) > 1e-4 * abs(jax_loss):
      raise SystemExit(f'error: torch first loss {first_loss:.6f} != JAX {jax_loss:.6f}: '
                       'the two models differ')
    for _ in range(_WARMUP.value):
      train_step()
    times, jax_times = [], []
    for _ in range(_STEPS.value):
      if mode == 'eager':      # our step alternates with eager: both see the same machine load
        jax_times.append(timed_jax_step())
      start = time.perf_counter()
      train_step()
      times.append(time.perf_counter() - start)
    if jax_times:
      jax_s = statistics.median(jax_times)
      rows.append({'impl': 'tokenformer_jax', 'step_s': jax_s, 'step_s_min': min(jax_times),
                   'first_loss': jax_loss, 'jax_first_loss': jax_loss,
                   'tokens_per_s': inputs.numel() / jax_s, 'gflops_per_s': step_flops / jax_s / 1e9})
    step_s = statistics.median(times)
    rows.append({'impl': f'pytorch {mode}', 'step_s': step_s, 'step_s_min': min(times),
                 'first_step_s': first_s, 'first_loss': first_loss, 'jax_first_loss': jax_loss,
                 'tokens_per_s': inputs.numel() / step_s, 'gflops_per_s': step_flops / step_s / 1e9})
  return rows


def main(argv):
  if len(argv) > 1:
    raise harness.UserError(f'unexpected arguments: {" ".join(argv[1:])}')
  cfg = harness.config_lib.from_flag(_CONFIG)
  harness.of_kind(cfg, 'tokenformer')
  try:
    import torch
  except ImportError as e:
    raise harness.UserError('PyTorch is not installed (pip install torch==2.13.0)') from e
  torch.set_num_threads(_THREADS.value or os.cpu_count())
  # measured before the models and after them; the best is the MFU denominator (step.py)
  peaks = [harness.measure_matmul_peak()]
  machine = harness.machine()
  print(f'f32 matmul peak (XLA, 2048³) before the models: {peaks[0] / 1e9:.1f} GFLOP/s; '
        f'torch {torch.__version__}, {torch.get_num_threads()} threads; '
        f'host allocator: {machine["host_allocator"]}')
  rows = bench(cfg)          # ours, eager[, compile]
  peaks.append(harness.measure_matmul_peak())
  ours, eager = rows[:2]
  print(f"PyTorch eager / tokenformer_jax step time: {eager['step_s'] / ours['step_s']:.3f} "
        f"(alternating steps); matmul peak after it {peaks[-1] / 1e9:.1f} GFLOP/s", flush=True)
  peak = max(peaks)
  print(f'matmul peak, best of {len(peaks)} measurements: {peak / 1e9:.1f} GFLOP/s (MFU denominator)')
  for r in rows:
    r['mfu'] = r['gflops_per_s'] * 1e9 / peak
    print(f"{r['impl']:16} step {r['step_s']:.3f} s  {r['tokens_per_s']:7.0f} tok/s  "
          f"{r['gflops_per_s']:6.1f} GFLOP/s  MFU {r['mfu']:.1%}  first loss {r['first_loss']:.5f} "
          f"(JAX {r['jax_first_loss']:.5f})")
  if _JSON.value:
    machine.update({'torch': torch.__version__, 'matmul_peak_gflops': peak / 1e9,
                    'matmul_peak_measurements_gflops': [p / 1e9 for p in peaks]})
    with open(_JSON.value, 'w', encoding='utf-8') as f:
      json.dump({'machine': machine, 'config': cfg.to_dict(), 'results': rows}, f, indent=2)


if __name__ == '__main__':
  harness.run(main)

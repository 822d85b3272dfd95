"""Grow + reshard benchmark: time and peak host memory of growing a checkpoint in tokens, depth or
width, against a plain restore of the grown checkpoint on the same mesh.

Each measured phase runs in a fresh process, so its peak RSS (ru_maxrss) is its own. On CPU, device
arrays live in host memory, so peak RSS counts the restored state itself; compare it with the state
sizes printed alongside (a grow that held both whole states would need about their sum).

  python benchmarks/grow.py [--growth=tokens|depth|width] [--size=full|small] [--workdir=/tmp/grow_bench]
                            [--devices=4] [--repeats=3] [--json=FILE]

The source is saved and grown on the mesh (1, 1, DEVICES); `full` is a 76M-parameter TokenFormer
(8 layers, d 768), `small` a 5M one (4 layers, d 256) for a loaded machine.
"""
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

SOURCES = {'full': dict(num_layers=8, d_model=768, num_heads=12, n_qkv=768, n_proj=768, n_ffn=3072),
           'small': dict(num_layers=4, d_model=256, num_heads=4, n_qkv=256, n_proj=256, n_ffn=1024)}
# what each growth changes: tokens + a third (rounded down to 64s); depth ×1.5 (new blocks appended);
# width ×2 (heads ×2)
GROWTHS = {'tokens': lambda m: {f'n_{g}': m[f'n_{g}'] + m[f'n_{g}'] // 3 // 64 * 64
                                for g in ('qkv', 'proj', 'ffn')},
           'depth': lambda m: dict(num_layers=m['num_layers'] * 3 // 2),
           'width': lambda m: dict(d_model=m['d_model'] * 2, num_heads=m['num_heads'] * 2)}


def config(big: bool, cache: str, devices: int, growth: str, size: str):
  from tokenformer_jax.config import base_config
  c = base_config()
  model = SOURCES[size]
  for key, value in {**model, **(GROWTHS[growth](model) if big else {})}.items():
    c.model[key] = value
  c.data.vocab_size, c.data.seq_len, c.data.cache_dir = 512, 128, cache
  c.train.batch_size = 8
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 1, devices
  c.lock()
  return c


def phase(name: str, workdir: str, devices: int, growth_kind: str, size: str) -> dict:
  """One measured phase, in this (fresh) process."""
  import jax
  from tokenformer_jax.checkpoints import run_record
  from tokenformer_jax.checkpoints import store
  from tokenformer_jax.data import pipeline
  from tokenformer_jax.runtime import sharding
  from tokenformer_jax.training import growth
  from tokenformer_jax.training import state as state_lib
  cache = os.path.join(workdir, 'cache')
  src, dst = os.path.join(workdir, 'src'), os.path.join(workdir, 'dst')
  out = {'phase': name}
  start = time.perf_counter()
  if name == 'make_source':
    c = config(False, cache, devices, growth_kind, size)
    spec = state_lib.make_spec(c, 512, sharding.make_mesh(c.mesh))
    state = state_lib.init_state(spec, c)
    store.save(store.manager(src), 0, state, pipeline.Position(), run_record.run_meta(c, 512))
    out['params_M'] = state_lib.num_params(spec) / 1e6
    out['state_MiB'] = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  elif name == 'grow':   # growth's three phases, timed one by one, with the peak RSS after each
    c = config(True, cache, devices, growth_kind, size)
    plan = growth.plan(c, src, dst)
    clock, cpu = time.perf_counter(), time.process_time()
    restored = jax.block_until_ready(growth.restore_source(plan))
    out.update(restore_s=time.perf_counter() - clock, restore_cpu_s=time.process_time() - cpu,
               peak_rss_after_restore_MiB=_peak_rss_MiB())
    clock, cpu = time.perf_counter(), time.process_time()
    state = jax.block_until_ready(growth.compose_state(plan, restored))
    out.update(grow_s=time.perf_counter() - clock, grow_cpu_s=time.process_time() - cpu,
               peak_rss_after_grow_MiB=_peak_rss_MiB())
    clock = time.perf_counter()
    growth.save(plan, state)
    out.update(save_s=time.perf_counter() - clock, peak_rss_after_save_MiB=_peak_rss_MiB())
  elif name == 'plain_restore':
    mngr = store.manager(dst)
    c = run_record.adopt_frozen_tau(config(True, cache, devices, growth_kind, size),
                                         store.read_meta(mngr, mngr.latest_step()))
    spec = state_lib.make_spec(c, 512, sharding.make_mesh(c.mesh))
    t0, cpu = time.perf_counter(), time.process_time()
    state = store.restore(mngr, mngr.latest_step(), state_lib.abstract_targets(spec))
    jax.block_until_ready(state)
    out['restore_s'], out['restore_cpu_s'] = time.perf_counter() - t0, time.process_time() - cpu
    out['params_M'] = state_lib.num_params(spec) / 1e6
    out['state_MiB'] = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  out['total_s'] = time.perf_counter() - start
  out['peak_rss_MiB'] = _peak_rss_MiB()
  out['load_average_1min'] = os.getloadavg()[0]    # the machine's, at the end of the phase
  return out


def _peak_rss_MiB() -> float:
  """This process's peak resident memory so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
  args = dict(a.lstrip('-').split('=', 1) for a in sys.argv[1:] if '=' in a)
  if len(sys.argv) > 1 and sys.argv[1] == '--phase':
    print(json.dumps(phase(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])))
    return
  workdir = args.get('workdir', '/tmp/grow_bench')
  devices = int(args.get('devices', '4'))
  repeats = int(args.get('repeats', '3'))
  growth_kind, size = args.get('growth', 'tokens'), args.get('size', 'full')
  if growth_kind not in GROWTHS or size not in SOURCES:
    sys.exit(f'error: --growth must be one of {sorted(GROWTHS)} and --size one of {sorted(SOURCES)}')
  shutil.rmtree(os.path.join(workdir, 'src'), ignore_errors=True)
  shutil.rmtree(os.path.join(workdir, 'dst'), ignore_errors=True)
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')

  def run(name):
    proc = subprocess.run([sys.executable, __file__, '--phase', name, workdir, str(devices), growth_kind,
                           size], env=env, capture_output=True, text=True)
    if proc.returncode:
      sys.exit(f'error: phase {name} failed:\n{proc.stderr[-3000:]}')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    os.sync()   # each phase starts with the previous phase's checkpoint on disk, not being flushed
    return result

  source = run('make_source')
  grows, plains = [], []
  for _ in range(repeats):      # interleaved, so that both see the same machine load
    shutil.rmtree(os.path.join(workdir, 'dst'), ignore_errors=True)
    grows.append(run('grow'))
    plains.append(run('plain_restore'))
  ratios = [(g['restore_s'] + g['grow_s']) / p['restore_s'] for g, p in zip(grows, plains)]
  cpu_ratios = [(g['restore_cpu_s'] + g['grow_cpu_s']) / p['restore_cpu_s'] for g, p in zip(grows, plains)]
  med = lambda rows, key: statistics.median(r[key] for r in rows)
  ratio = statistics.median(ratios)
  print(f"growth in {growth_kind} ({size}): source {source['params_M']:.1f}M params "
        f"({source['state_MiB']:.0f} MiB state) → grown "
        f"{plains[0]['params_M']:.1f}M ({plains[0]['state_MiB']:.0f} MiB) on {devices} devices, "
        f"mesh (1,1,{devices}); medians of {repeats} runs")
  print(f"grow: restore {med(grows, 'restore_s'):.2f}s + compose {med(grows, 'grow_s'):.2f}s + save "
        f"{med(grows, 'save_s'):.2f}s; plain restore of the grown checkpoint {med(plains, 'restore_s'):.2f}s; "
        f"(restore + compose) / plain restore = {ratio:.2f} "
        f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}); in CPU seconds of the process: "
        f"{statistics.median(cpu_ratios):.2f} (runs: {', '.join(f'{r:.2f}' for r in cpu_ratios)})")
  loads = [r['load_average_1min'] for r in grows + plains]
  print(f"1-minute load average at the end of the measured phases: {min(loads):.1f}–{max(loads):.1f} on "
        f"{os.cpu_count()} cores (above the core count, the other processes share the cores and every "
        f"phase's time stretches, not equally)")
  print(f"peak RSS: grow process {med(grows, 'peak_rss_after_restore_MiB'):.0f} MiB after restore, "
        f"{med(grows, 'peak_rss_after_grow_MiB'):.0f} after composing, "
        f"{med(grows, 'peak_rss_after_save_MiB'):.0f} after the save; plain-restore process "
        f"{med(plains, 'peak_rss_MiB'):.0f} MiB; source + grown states "
        f"{source['state_MiB'] + plains[0]['state_MiB']:.0f} MiB")
  if 'json' in args:
    with open(args['json'], 'w') as f:
      json.dump({'devices': devices, 'growth': growth_kind, 'size': size, 'source': source, 'grow': grows,
                 'plain_restore': plains, 'ratios': ratios, 'ratio': ratio, 'cpu_ratios': cpu_ratios,
                 'load_average': os.getloadavg()}, f, indent=2)


if __name__ == '__main__':
  main()

"""Fault trials (not a test): interrupt the tiny config at random moments, rerun, and count the reruns
that reproduce the uninterrupted run's losses exactly.

- kill -9: K trials at a moment drawn uniformly over the uninterrupted run's wall-clock time, so they
  land in start-up, compilation, steps and saves; half the trials save asynchronously (the default),
  half synchronously. A draw that comes after a (faster) trial run has ended kills nothing: it is
  recorded (`finished_before_kill`) and another trial is run, so K runs are really interrupted. Each trial records where it landed (`phase`: before the first step, during a
  step, or while a checkpoint's temporary folder was being written).
- SIGTERM to one of two processes (one CPU device each): at a random moment after the first step;
  both must exit 143 and the rerun must reproduce the two-process reference.

  python benchmarks/faults.py [--kill_trials=20] [--sigterm_trials=5] [--steps=40] [--json=FILE]
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'experiments', 'tiny.py')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def losses(workdir: str) -> dict:
  """step → loss, the last record of each step winning (a resumed run redoes some steps)."""
  out = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if 'loss' in record:
          out[record['step']] = record['loss']
  return out


def phase(workdir: str) -> str:
  checkpoints = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(checkpoints) and any('orbax-checkpoint-tmp' in name for name in os.listdir(checkpoints)):
    return 'save'
  return 'step' if losses(workdir) else 'start-up/compile'


class Runs:
  def __init__(self, root: str, steps: int, checkpoint_every: int):
    self.root, self.cache = root, os.path.join(root, 'cache')
    self.flags = [f'--config={TINY}', f'--config.data.cache_dir={self.cache}',
                  f'--config.train.steps={steps}', '--config.train.log_every=1',
                  f'--config.train.checkpoint_every={checkpoint_every}',
                  '--config.train.eval_every=100000', '--config.train.sample_tokens=0']

  def single(self, workdir: str, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'tokenformer_jax.main', f'--workdir={workdir}',
                             *self.flags, *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)

  def pair(self, workdir: str) -> list:
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1', JAX_PLATFORMS='cpu')
    common = [sys.executable, '-m', 'tokenformer_jax.main', f'--workdir={workdir}', *self.flags,
              f'--coordinator_address=localhost:{free_port()}', '--num_processes=2',
              '--distributed_timeout_s=60']
    return [subprocess.Popen(common + [f'--process_id={i}'], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for i in range(2)]


def finish(procs, timeout=900) -> list:
  try:
    return [(p.communicate(timeout=timeout)[1], p.returncode) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kill_trials', type=int, default=20)
  parser.add_argument('--sigterm_trials', type=int, default=5)
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--checkpoint_every', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--root', default='/tmp/fault_trials')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  rng = random.Random(args.seed)
  shutil.rmtree(args.root, ignore_errors=True)
  os.makedirs(args.root)
  runs = Runs(args.root, args.steps, args.checkpoint_every)

  # ---- references: one process (twice: the first prepares the shared data), then two processes ----
  for name in ('prepare', 'reference'):
    start = time.perf_counter()
    [(err, code)] = finish([runs.single(os.path.join(args.root, name))])
    assert code == 0, err[-2000:]
    ref_seconds = time.perf_counter() - start  # the second: what a trial's run takes
  reference = losses(os.path.join(args.root, 'reference'))
  assert reference == losses(os.path.join(args.root, 'prepare'))
  pair_start = time.perf_counter()
  procs = runs.pair(os.path.join(args.root, 'reference_pair'))
  while not losses(os.path.join(args.root, 'reference_pair')) and procs[0].poll() is None:
    time.sleep(0.05)
  first_step = time.perf_counter()
  results = finish(procs)
  assert all(code == 0 for _, code in results), results[0][0][-2000:]
  pair_seconds = time.perf_counter() - pair_start
  pair_steps_seconds = time.perf_counter() - first_step   # from the first logged step to the exit
  reference_pair = losses(os.path.join(args.root, 'reference_pair'))
  print(f'reference: {len(reference)} steps in {ref_seconds:.1f} s; two processes {pair_seconds:.1f} s '
        f'({pair_steps_seconds:.1f} s from the first step)', flush=True)

  # ---- kill -9 ----
  kill_trials, trial = [], 0
  while sum(not t['finished_before_kill'] for t in kill_trials) < args.kill_trials:
    if trial >= 2 * args.kill_trials:
      break
    trial += 1
    workdir = os.path.join(args.root, f'kill_{trial}')
    mode = ['--config.train.async_checkpointing=true', '--config.train.async_checkpointing=false'][trial % 2]
    at = rng.uniform(0.0, ref_seconds)
    proc = runs.single(workdir, mode)
    time.sleep(at)
    landed = phase(workdir)
    ended_before = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    [(err, code)] = finish([runs.single(workdir, mode)])
    record = {'trial': trial, 'async': trial % 2 == 0, 'at_s': round(at, 2), 'phase': landed,
              'finished_before_kill': ended_before,
              'rerun_status': code, 'exact': code == 0 and losses(workdir) == reference}
    kill_trials.append(record)
    print(json.dumps(record), flush=True)
    if not record['exact']:
      print(err[-2000:], file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)

  # ---- SIGTERM to one of two processes ----
  sigterm_trials = []
  for trial in range(args.sigterm_trials):
    workdir = os.path.join(args.root, f'sigterm_{trial}')
    procs = runs.pair(workdir)
    deadline = time.time() + 600
    while not losses(workdir) and time.time() < deadline and procs[0].poll() is None:
      time.sleep(0.05)
    delay = rng.uniform(0.0, 0.8 * pair_steps_seconds)   # while it trains
    time.sleep(delay)
    target = rng.randrange(2)
    alive = all(p.poll() is None for p in procs)
    procs[target].send_signal(signal.SIGTERM)
    signalled = time.perf_counter()
    first = finish(procs)
    exit_s = time.perf_counter() - signalled
    rerun = finish(runs.pair(workdir))
    record = {'trial': trial, 'signalled_process': target, 'delay_after_first_step_s': round(delay, 2),
              'alive_at_signal': alive,
              'statuses': [code for _, code in first], 'exit_within_s': round(exit_s, 1),
              'rerun_statuses': [code for _, code in rerun],
              'exact': all(code == 0 for _, code in rerun) and losses(workdir) == reference_pair}
    sigterm_trials.append(record)
    print(json.dumps(record), flush=True)
    if not record['exact']:
      print(rerun[0][0][-2000:], file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)

  summary = {
      'config': 'experiments/tiny.py', 'steps': args.steps, 'checkpoint_every': args.checkpoint_every,
      'cpu_count': os.cpu_count(), 'reference_s': round(ref_seconds, 1),
      'kill9_exact': f"{sum(t['exact'] for t in kill_trials)}/{len(kill_trials)}",
      # trials whose run was still going when killed (a draw late in the reference's time may come after
      # a faster trial run ended: then the rerun is a no-op resume)
      'kill9_mid_run_exact': f"{sum(t['exact'] for t in kill_trials if not t['finished_before_kill'])}/"
                             f"{sum(not t['finished_before_kill'] for t in kill_trials)}",
      'kill9_phases': {p: sum(t['phase'] == p for t in kill_trials)
                       for p in sorted({t['phase'] for t in kill_trials})},
      'sigterm_exact': f"{sum(t['exact'] for t in sigterm_trials)}/{len(sigterm_trials)}",
      'sigterm_alive_at_signal': f"{sum(t['alive_at_signal'] for t in sigterm_trials)}/{len(sigterm_trials)}",
      'sigterm_both_143': f"{sum(t['statuses'] == [143, 143] for t in sigterm_trials)}/{len(sigterm_trials)}",
  }
  print(json.dumps(summary, indent=1))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({**summary, 'kill9_trials': kill_trials, 'sigterm_trials': sigterm_trials}, f, indent=1)


if __name__ == '__main__':
  main()

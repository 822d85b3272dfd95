"""Measuring a command and every process it starts: wall seconds, CPU seconds and summed peak RSS.

A tool that fans out into worker processes (a multiprocessing pool, Beam's worker processes) is charged
for all of them: CPU seconds are the rusage of every descendant (this process becomes a child subreaper,
so workers orphaned by their parent are reaped here and counted too), and memory is the sum over
processes of each one's own peak RSS (VmHWM), read from /proc while it runs. Linux only.
"""
import ctypes
import os
import resource
import subprocess
import time

_PR_SET_CHILD_SUBREAPER = 36
_POLL_S = 0.05


def become_subreaper() -> None:
  libc = ctypes.CDLL(None, use_errno=True)
  if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER) failed')


def _children(pid: int) -> list[int]:
  found = []
  try:
    for tid in os.listdir(f'/proc/{pid}/task'):
      with open(f'/proc/{pid}/task/{tid}/children', encoding='ascii') as f:
        found.extend(int(c) for c in f.read().split())
  except (FileNotFoundError, ProcessLookupError):
    pass
  return found


def _descendants(root: int) -> list[int]:
  out, todo = [], [root]
  while todo:
    pid = todo.pop()
    kids = _children(pid)
    out.extend(kids)
    todo.extend(kids)
  return out


def _peak_kib(pid: int) -> tuple[str, int] | None:
  """(command name, VmHWM in KiB), or None once the process is gone or a zombie."""
  try:
    with open(f'/proc/{pid}/status', encoding='ascii', errors='replace') as f:
      fields = dict(line.split(':', 1) for line in f if ':' in line)
  except (FileNotFoundError, ProcessLookupError):
    return None
  if 'VmHWM' not in fields:
    return None
  return fields['Name'].strip(), int(fields['VmHWM'].split()[0])


def _reap_finished() -> None:
  while True:
    try:
      if os.waitpid(-1, os.WNOHANG)[0] == 0:
        return
    except ChildProcessError:
      return


def run(cmd: list[str], cwd: str | None = None, env: dict | None = None, log_path: str | None = None
        ) -> dict:
  """Runs cmd to completion; raises RuntimeError with its output's tail if it fails."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  load_before = os.getloadavg()[0]
  log = open(log_path or os.devnull, 'w', encoding='utf-8')  # pylint: disable=consider-using-with
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
  peaks = {}  # pid -> (name, KiB)
  while True:
    # Workers orphaned by the command are reparented here: polled, reaped, their CPU time counted.
    if proc.poll() is not None:
      _reap_finished()
    pids = _descendants(os.getpid())
    for pid in pids:
      seen = _peak_kib(pid)
      if seen is not None and seen[1] >= peaks.get(pid, ('', 0))[1]:
        peaks[pid] = seen
    if proc.returncode is not None and not pids:
      break
    time.sleep(_POLL_S)
  wall = time.perf_counter() - start
  log.close()
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode != 0:
    tail = open(log_path, encoding='utf-8', errors='replace').read()[-3000:] if log_path else ''
    raise RuntimeError(f'failed ({proc.returncode}): {" ".join(cmd)}\n{tail}')
  return {'wall_s': wall,
          'cpu_s': (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
          'peak_rss_sum_MiB': sum(kib for _, kib in peaks.values()) / 1024,
          'processes': sorted(((name, round(kib / 1024)) for name, kib in peaks.values()),
                              key=lambda p: -p[1]),
          'load_before': load_before, 'load_after': os.getloadavg()[0]}

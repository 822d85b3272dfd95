"""The house in figures: how the package is laid out, and how much of it one training run touches.

    python benchmarks/house.py [--run]

Static figures (from the source): top-level modules, rooms (subpackages), the largest module, the
longest function, and the call sites of `config.validate`. With --run, a tiny training run (two steps on
the bundled corpus, in a temporary workdir) is traced with `sys.setprofile` and the package modules with a
function that ran are counted (importing a module, or defining its classes, does not count).
"""
import ast
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'tokenformer_jax')

_TRACE = r'''
import inspect, os, sys, threading
touched = set()
def _profile(frame, event, arg):
  if event == 'call' and frame.f_code.co_flags & inspect.CO_NEWLOCALS:   # a function, not a module or class body
    path = frame.f_code.co_filename
    if path.startswith(PACKAGE):
      touched.add(os.path.relpath(path, PACKAGE))
sys.setprofile(_profile); threading.setprofile(_profile)
from tokenformer_jax import main
sys.argv = ['main', '--config=experiments/tiny.py', '--workdir=' + WORKDIR, '--config.train.steps=2',
            '--config.train.eval_every=2', '--config.train.checkpoint_every=2', '--config.train.log_every=1']
try:
  main.run()
except SystemExit:
  pass
sys.setprofile(None)
print('TOUCHED', len(touched))
for t in sorted(touched):
  print('  ', t)
'''


def _modules():
  for folder, _, names in os.walk(PACKAGE):
    for name in sorted(names):
      if name.endswith('.py'):
        yield os.path.relpath(os.path.join(folder, name), PACKAGE)


def static_figures() -> dict:
  modules = list(_modules())
  top = [m for m in modules if os.sep not in m and m != '__init__.py']
  rooms = sorted({m.split(os.sep)[0] for m in modules if os.sep in m})
  lines = {m: sum(1 for _ in open(os.path.join(PACKAGE, m), encoding='utf-8')) for m in modules}
  longest, validate_calls = ('', 0), []
  for m in modules:
    tree = ast.parse(open(os.path.join(PACKAGE, m), encoding='utf-8').read())
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > longest[1]:
          longest = (f'{m}:{node.name}', n)
      if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, 'id', '')
        if name == 'validate':
          validate_calls.append(f'{m}:{node.lineno}')
  largest = max(lines, key=lines.get)
  return {'modules': len(modules), 'top_level_modules': len(top), 'rooms': rooms,
          'largest_module': (largest, lines[largest]), 'longest_function': longest,
          'validate_call_sites': validate_calls, 'package_lines': sum(lines.values())}


def touched_by_a_run() -> list[str]:
  with tempfile.TemporaryDirectory() as tmp:
    code = f'PACKAGE = {PACKAGE + os.sep!r}\nWORKDIR = {os.path.join(tmp, "w")!r}\n' + _TRACE
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  lines = out.stdout.splitlines()
  if not any(l.startswith('TOUCHED') for l in lines):
    raise SystemExit(f'the traced run failed:\n{out.stderr[-3000:]}')
  return [l.strip() for l in lines[[i for i, l in enumerate(lines) if l.startswith('TOUCHED')][0] + 1:]]


def main():
  figures = static_figures()
  for key, value in figures.items():
    print(f'{key}: {value}')
  if '--run' in sys.argv[1:]:
    touched = touched_by_a_run()
    print(f'modules one training run touches: {len(touched)}')
    for t in touched:
      print('  ', t)


if __name__ == '__main__':
  main()

"""JAX's private modules are reached from two small functions only, each saying which public API is
missing; everything else uses public JAX (or a library's public accessor)."""
import ast
import pathlib

import tokenformer_jax

# (module, function) → the public API JAX lacks, as each function's docstring or comment says.
ALLOWED = {
    ('runtime/platforms.py', 'tpu_attached'),    # counting TPU chips before a backend starts
    ('runtime/gpu_aot.py', 'cudnn_loadable'),    # the cuDNN version JAX's CUDA plugin loaded
}


def _is_private(node) -> bool:
  if isinstance(node, ast.ImportFrom):
    names = [node.module or '']
  elif isinstance(node, ast.Import):
    names = [alias.name for alias in node.names]
  else:
    return False
  return any(name.startswith(('jax._src', 'jax.lib')) for name in names)


def _private_uses():
  """(module, enclosing function or None) of every import of a private JAX module in the package."""
  root = pathlib.Path(tokenformer_jax.__file__).parent
  for path in sorted(root.rglob('*.py')):
    tree = ast.parse(path.read_text())
    inside = {}   # node → its innermost function (ast.walk reaches outer functions first)
    for func in ast.walk(tree):
      if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        inside.update({node: func.name for node in ast.walk(func) if node is not func})
    for node in ast.walk(tree):
      if _is_private(node):
        yield str(path.relative_to(root)), inside.get(node)


def test_private_jax_is_reached_only_where_no_public_api_exists():
  assert set(_private_uses()) == ALLOWED

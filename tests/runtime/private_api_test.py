"""No module of the package imports JAX's private modules (`jax._src`, `jax.lib`): they change without
notice between releases."""
import ast
import pathlib

import tokenformer_jax


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


def test_no_private_jax():
  assert list(_private_uses()) == []

"""The package's import structure, read from the source: no import circle, and no import that
points up a layer (docs/architecture.md, "Layers")."""
import ast
import pathlib

import flamingo_jax

ROOT = pathlib.Path(flamingo_jax.__file__).parent

# Lowest first. A module may import its own package's modules and anything in a lower layer; never
# a higher layer, nor another package of its own layer. Entry points (`__main__`) sit on top.
LAYERS = (
    ("errors",),  # imports nothing of ours
    ("paths", "tree", "chips", "overrides", "runtime", "cli"),  # the ground floor
    ("models",),
    ("data",),
    ("config_check", "workdir"),  # a training config's rules; the training workdir's format
    ("weights", "generate"),
    ("train",),
    ("plan", "evaluate"),
    ("sweep",),
    ("convert", "info"),  # command lines of their own
)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in ROOT.rglob("*.py"):
    parts = path.relative_to(ROOT).with_suffix("").parts
    out[".".join(p for p in parts if p != "__init__")] = path
  return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
  """Our modules that `name` imports anywhere in its file (module level or inside functions)."""
  package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(["flamingo_jax", *package[:len(package) - node.level + 1], *filter(None, [node.module])])
      # `from package import module` needs the module; `from module import name`, the module.
      targets = [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    for target in targets:
      if not target.startswith("flamingo_jax."):
        continue
      target = target.removeprefix("flamingo_jax.")
      while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
      if target in modules and target != name:
        found.add(target)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
  top = module.split(".")[0]
  for i, layer in enumerate(LAYERS):
    if top in layer:
      return i
  raise AssertionError(f"{module}: its package {top!r} is in no layer of LAYERS; add it")


def test_no_import_points_up_a_layer():
  graph = _graph()
  wrong = []
  for module, targets in graph.items():
    if not module or module.endswith("__main__"):  # the package itself; entry points sit on top
      continue
    for target in targets:
      same_package = target.split(".")[0] == module.split(".")[0]
      if not same_package and _layer(target) >= _layer(module):
        wrong.append(f"{module} -> {target}")
  assert not wrong, "imports that point up or across a layer: " + ", ".join(sorted(wrong))


def test_no_import_circle():
  graph = _graph()
  state, circles = {}, []

  def visit(module, trail):
    state[module] = "open"
    for target in sorted(graph[module]):
      if state.get(target) == "open":
        circles.append(" -> ".join(trail[trail.index(target):] + [target]))
      elif target not in state:
        visit(target, trail + [target])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not circles, "import circles: " + "; ".join(circles)


def test_the_checks_see_imports_inside_functions():
  # A lazy import counts: the layering is about what a module needs, not when it loads it.
  graph = _graph()
  assert "data.tar_source" in graph["data.array_record"]  # imported inside convert_shard
  assert "cli" in graph["data.array_record.__main__"]
  assert "workdir" in graph["weights.convert"]

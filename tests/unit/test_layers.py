"""The import rule of the tree: imports point down the layers of ``testbed.LAYERS`` and never in a circle.

Every module of ``testbed`` and ``controllers`` is read with ``ast`` (nothing is imported), every import in
it is resolved to a module of the tree, function-level and ``TYPE_CHECKING`` imports included: an import
inside a function is still an arrow, only a later one.
"""

import ast
from pathlib import Path

import networkx as nx
import pytest

from testbed import LAYERS

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("testbed", "controllers")


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the two packages (``pkg/__init__.py`` as ``pkg``)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of the tree that module ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per dot after the first
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {_module_of(t, known) for t in targets} - {None, name}


def _module_of(target: str, known: set[str]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def layer_of(module: str) -> int:
    """The index in LAYERS of the layer holding ``module`` (longest prefix wins)."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer of testbed.LAYERS: add it to one")
    return max(matches)[1]


def import_graph() -> nx.DiGraph:
    known = modules()
    graph = nx.DiGraph()
    for name, path in known.items():
        if name in PACKAGES:
            continue  # the packages' faces: testbed/__init__ holds LAYERS itself
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imported(name, path, set(known)) if target not in PACKAGES)
    return graph


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_imports_point_down_the_layers():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, b in import_graph().edges if layer_of(b) > layer_of(a)]
    assert not upward, "imports from a higher layer into a lower one:\n" + "\n".join(sorted(upward))


def test_no_module_imports_itself_through_others():
    circles = [" -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(import_graph())]
    assert not circles, "circular imports:\n" + "\n".join(sorted(circles))


@pytest.mark.parametrize("source, expected", [
    ("from testbed.roce import nic", {"testbed.roce.nic"}),
    ("from testbed.roce.nic import Nic", {"testbed.roce.nic"}),
    ("import testbed.roce.nic as n", {"testbed.roce.nic"}),
    ("def f():\n    from .transport import TransportConfig", {"testbed.roce.transport"}),
    ("from . import psn", {"testbed.roce.psn"}),
])
def test_imports_are_resolved_to_modules_of_the_tree(tmp_path, source, expected):
    path = tmp_path / "sender.py"
    path.write_text(source)
    known = {"testbed", "testbed.roce", "testbed.roce.nic", "testbed.roce.transport", "testbed.roce.psn",
             "testbed.roce.sender"}
    assert imported("testbed.roce.sender", path, known) == expected

"""Topologies by name or path: a script in ``topologies/`` (``two_sites``) or any ``*.py`` defining one.

A topology script follows Mininet's loader convention (``mn --custom``): a ``topos`` dict whose values are
``FabricTopo`` subclasses; the entry named like the file wins, else the first.  Loading runs the script as a
module; a script run directly (``python topologies/two_sites.py``) calls the CLI instead
(``testbed.cli.run_script``).
"""

import importlib.util
import inspect
from dataclasses import fields
from pathlib import Path

from testbed.model.fabric import LinkConfig, TopologyError
from testbed.net.topo import FabricTopo

TOPOLOGY_DIR = Path(__file__).resolve().parent.parent / "topologies"
DEFAULT_TOPOLOGY = "two_sites"


def load_topology(spec: str) -> type[FabricTopo]:
    """A FabricTopo subclass from a topology name or a script path (via its Mininet-style ``topos`` dict)."""
    path = script_path(spec)
    if not path.is_file():
        raise TopologyError(f"unknown topology {spec!r} (available: {', '.join(available_topologies())})")
    module_spec = importlib.util.spec_from_file_location(f"topologies.{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as error:
        raise TopologyError(f"topology script {path}: syntax error at line {error.lineno}: {error.msg}") from None
    except Exception as error:  # the script's own code raised: the user's to fix, named in one line
        raise TopologyError(f"topology script {path} failed on import: {type(error).__name__}: {error}") from None
    topos = getattr(module, "topos", {})
    if not isinstance(topos, dict):
        raise TopologyError(f"topology script {path}: 'topos' must be a dict of name -> FabricTopo subclass, "
                            f"not a {type(topos).__name__}")
    candidates = [t for t in topos.values() if isinstance(t, type) and issubclass(t, FabricTopo)]
    if not candidates:
        raise TopologyError(f"topology script {path} defines no FabricTopo in its 'topos' dict")
    return topos.get(path.stem, candidates[0])


def script_path(spec: str) -> Path:
    """The script a topology name or path stands for (a name: ``topologies/<name>.py``)."""
    return Path(spec) if spec.endswith(".py") else TOPOLOGY_DIR / f"{spec}.py"


def available_topologies() -> list[str]:
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.py") if not p.stem.startswith("_"))


def accepted_keywords(topo_cls: type[FabricTopo]) -> set[str]:
    """The keywords ``topo_cls.build`` takes: its named parameters and, where it passes ``**dci`` on to
    ``addDci``, every DCI link setting (``LinkConfig``'s fields but the rate, and ``delay_ms``)."""
    signature = inspect.signature(topo_cls.build)
    named = {p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        named |= {f.name for f in fields(LinkConfig)} - {"bw_mbps"}
    return named

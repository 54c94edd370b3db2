"""Congestion-control algorithms by kind, found the way pyroute2 finds a qdisc's module by its kind.

Every module of this package is looked at once; each ``CongestionControl`` subclass it defines with a
``kind`` of its own is an algorithm.  Adding one is one new file: a class with ``kind`` and ``from_spec``.
Nothing here knows the algorithms by name, and nothing that uses them needs to either:

    cc = registry.from_spec({"kind": "adaptive", "path": {...}, "target_queue_ns": 500_000})
"""

import functools
import importlib
import pkgutil

import controllers
from controllers.base import CongestionControl


@functools.cache
def algorithms() -> dict[str, type[CongestionControl]]:
    """kind -> algorithm, for every algorithm defined in this package."""
    found: dict[str, type[CongestionControl]] = {}
    for info in pkgutil.iter_modules(controllers.__path__):
        module = importlib.import_module(f"{controllers.__name__}.{info.name}")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, CongestionControl)
                    and value.__module__ == module.__name__ and "kind" in vars(value)):
                if value.kind in found:
                    raise TypeError(f"two algorithms of kind {value.kind!r}: {found[value.kind]} and {value}")
                found[value.kind] = value
    return found


def from_spec(spec: dict) -> CongestionControl:
    """The algorithm ``spec`` describes; a one-line ValueError naming the kinds there are otherwise."""
    kind = spec.get("kind")
    if kind not in algorithms():
        raise ValueError(f"unknown congestion control {kind!r} (kinds: {', '.join(sorted(algorithms()))})")
    return algorithms()[kind].from_spec(spec)

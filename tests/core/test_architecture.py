"""The import graph of safegw follows one-way rules, read from the source with ``ast``.

Every import counts: at the top of a module, inside a function (a lazy import is
still a dependency) or under ``TYPE_CHECKING``; relative imports are resolved. An
import names the deepest safegw module it reaches: ``from gateway.core import batch``
depends on ``gateway.core.batch``, ``from gateway import __version__`` on ``gateway``
(the package's ``__init__``). Imports of anything outside safegw are not looked at.

How to read ``RULES``: a module under ``layer`` may import only safegw modules under
one of ``may_import`` (a name covers the module or package of that name and everything
below it), except those under ``except_``. The first rule whose layer holds a module
applies to it; modules under no layer (the daemon, its CLI, the uplink's I/O side) may
import anything, as long as no import cycle forms. Cycles are forbidden everywhere.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: the top-level packages that make up safegw (pyproject's packages.find)
PACKAGES = ("gateway", "drivers", "rules", "uplink", "central", "simulators", "northbound")

#: (layer, may_import, except_): see the module docstring
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    # the leaf: batches, channels, record format, units, config models, secrets
    ("gateway.core", ("gateway.core",), ()),
    # the journal and its read-only queries
    ("gateway.store", ("gateway.core", "gateway.store"), ()),
    # the alarm engine
    ("rules", ("gateway.core", "rules"), ()),
    # the uplink's pure side: record codec, envelope crypto, key files (no other I/O)
    ("uplink.codec", ("gateway.core", "uplink.codec", "uplink.envelope", "uplink.keys"), ()),
    ("uplink.envelope", ("gateway.core", "uplink.codec", "uplink.envelope", "uplink.keys"), ()),
    ("uplink.keys", ("gateway.core", "uplink.codec", "uplink.envelope", "uplink.keys"), ()),
    # the signed config document central issues (sign/verify only)
    ("uplink.configdoc", ("gateway.core", "uplink.keys", "uplink.configdoc"), ()),
    # protocol drivers
    ("drivers", ("gateway.core", "drivers"), ()),
    # the simulated plant: written independently of the gateway it tests
    ("simulators", ("gateway.core", "simulators"), ()),
    # the central node: reads the journal (through the journal-consumer base) and the
    # historian, speaks the uplink's formats, but has its own transport (not the
    # gateway's MQTT client)
    ("central", ("gateway.core", "gateway.store", "gateway.consumer", "gateway.historian", "uplink",
                 "central"),
     ("uplink.mqtt",)),
    # the regulator adapters (HJ 212, ...): journal consumers reading through the consumer
    # base and the store's queries; the daemon reaches them only by name (SERVICES)
    ("northbound", ("gateway.core", "gateway.consumer", "gateway.services", "gateway.store",
                    "northbound"), ()),
]


@dataclass(frozen=True, order=True)
class Import:
    """One import statement's dependency: ``module`` (at ``path:line``) needs ``target``."""

    module: str
    line: int
    target: str
    path: str


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def find_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the packages under ``root``."""
    mods: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The deepest known module that ``name`` (a module or a name in one) lies in."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def imports_of(module: str, path: Path, mods: dict[str, Path], root: Path) -> Iterator[Import]:
    """Every safegw module that ``module`` imports, wherever in the file the import is."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    rel = str(path.relative_to(root))
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        line = 0
        if isinstance(node, ast.Import):
            line = node.lineno
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            line = node.lineno
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            # `from pkg import name`: name is a submodule, or a name in pkg's __init__
            names = [f"{base}.{a.name}" if a.name != "*" else base for a in node.names]
        for name in names:
            target = _resolve(name, mods)
            if target is not None and target != module:
                yield Import(module, line, target, rel)


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    mods = find_modules(root, packages)
    return sorted(imp for m, p in mods.items() for imp in imports_of(m, p, mods, root))


def rule_violations(graph: list[Import]) -> list[str]:
    """One line per import that breaks ``RULES``: where, what, and what is allowed."""
    out = []
    for imp in graph:
        for layer, allowed, denied in RULES:
            if not _under(imp.module, layer):
                continue
            ok = (any(_under(imp.target, a) for a in allowed)
                  and not any(_under(imp.target, d) for d in denied))
            if not ok:
                told = ", ".join(allowed) + (f" (not {', '.join(denied)})" if denied else "")
                out.append(f"{imp.path}:{imp.line}: {imp.module} imports {imp.target}; "
                           f"{layer} may import only {told}")
            break
    return out


def cycles(graph: list[Import]) -> list[str]:
    """Each import cycle (one per strongly connected group of modules), with the lines
    that close it: ``a (a.py:3) -> b (b.py:7) -> a``."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in graph:
        edges.setdefault(imp.module, {}).setdefault(imp.target, imp)
    # Tarjan's strongly connected components, iteratively (no recursion limit)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.add(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(group)
    return [_show_cycle(g, edges) for g in groups]


def _show_cycle(group: set[str], edges: dict[str, dict[str, Import]]) -> str:
    """One concrete cycle through the group's first module (breadth-first: the shortest)."""
    first = min(group)
    came: dict[str, Import] = {}
    frontier = [first]
    while frontier:
        nxt = []
        for v in frontier:
            for w, imp in sorted(edges.get(v, {}).items()):
                if w in group and w not in came:
                    came[w] = imp
                    nxt.append(w)
        if first in came:
            break
        frontier = nxt
    path = [came[first]]
    while path[-1].module != first:
        path.append(came[path[-1].module])
    path.reverse()
    text = "cycle: " + " -> ".join(f"{i.module} ({i.path}:{i.line})" for i in path) + f" -> {first}"
    rest = sorted(group - {i.module for i in path})
    return text + (f"; tangled with it: {', '.join(rest)}" if rest else "")


def check(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Every rule violation and every cycle in the tree at ``root``; [] when it is clean."""
    graph = import_graph(root, packages)
    return rule_violations(graph) + cycles(graph)


# ---------------------------------------------------------------------------- tests

def test_the_source_tree_follows_the_import_rules() -> None:
    problems = check(ROOT)
    assert not problems, "\n" + "\n".join(problems)


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))


def test_a_planted_violation_and_cycle_are_reported_with_their_lines(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "gateway/__init__.py": "__version__ = '0'\n",
        "gateway/core/__init__.py": "",
        "gateway/core/batch.py": "import os\n",
        "gateway/store/__init__.py": "",
        "gateway/store/journal.py": "from gateway.core.batch import Batch\nclass Journal: ...\n",
        "rules/__init__.py": "",
        # allowed, then a lazy import of the journal from the alarm engine
        "rules/x.py": """\
            from gateway.core import batch
            from . import y


            def f():
                from gateway.store.journal import Journal
                return Journal
            """,
        "rules/y.py": "import numpy\n",
        # a two-module cycle, one side relative and inside a function
        "drivers/__init__.py": "",
        "drivers/a.py": "import drivers.b\n",
        "drivers/b.py": "def g():\n    from .a import thing\n",
        # gateway.core may not use the gateway package's own names
        "gateway/core/units.py": "\n\nfrom gateway import __version__\n",
    })
    assert check(tmp_path) == [
        "gateway/core/units.py:3: gateway.core.units imports gateway; "
        "gateway.core may import only gateway.core",
        "rules/x.py:6: rules.x imports gateway.store.journal; rules may import only gateway.core, rules",
        "cycle: drivers.a (drivers/a.py:1) -> drivers.b (drivers/b.py:2) -> drivers.a",
    ]
    # and with the planted problems gone, the fake tree is clean
    (tmp_path / "rules" / "x.py").write_text("from gateway.core import batch\nfrom . import y\n")
    (tmp_path / "drivers" / "b.py").write_text("")
    (tmp_path / "gateway" / "core" / "units.py").unlink()
    assert check(tmp_path) == []


def test_nothing_imports_the_northbound_adapters() -> None:
    """The daemon builds them from gateway.app.SERVICES by name ("northbound.service:...");
    an import of northbound from anywhere else ties a platform's protocol into the core."""
    found = [f"{i.path}:{i.line}: {i.module} imports {i.target}" for i in import_graph(ROOT)
             if _under(i.target, "northbound") and not _under(i.module, "northbound")]
    assert not found, "\n".join(found)


def test_central_may_use_the_uplink_but_not_its_mqtt_client(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "uplink/__init__.py": "",
        "uplink/envelope.py": "",
        "uplink/mqtt.py": "",
        "central/__init__.py": "",
        "central/node.py": "from uplink import envelope\nfrom uplink.mqtt import Client\n",
    })
    assert check(tmp_path) == [
        "central/node.py:2: central.node imports uplink.mqtt; central may import only gateway.core, "
        "gateway.store, gateway.consumer, gateway.historian, uplink, central (not uplink.mqtt)",
    ]


def test_a_knot_of_three_modules_names_them_all(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "simulators/__init__.py": "",
        "simulators/a.py": "from simulators import b\n",
        "simulators/b.py": "from simulators import a, c\n",
        # an import for type checking only still ties c to b
        "simulators/c.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from simulators.b import B
            """,
    })
    assert check(tmp_path) == [
        "cycle: simulators.a (simulators/a.py:1) -> simulators.b (simulators/b.py:1) -> simulators.a; "
        "tangled with it: simulators.c",
    ]

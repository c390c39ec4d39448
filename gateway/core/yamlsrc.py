"""YAML loading that keeps every node's line and column, without YAML 1.1 surprises.

PyYAML implements YAML 1.1, where ``on``/``off``/``yes``/``no`` are booleans, ``0502``
is octal 322 and ``12:30`` is 750. A channel named ``on`` or an address written
``0502`` must mean what the engineer typed, so plain scalars are resolved here with
YAML 1.2 core-schema rules instead: only ``true``/``false`` are booleans, only
``null``/``~``/empty is null, integers are decimal without leading zeros (``0x1F``
hex is accepted), and anything else stays a string for the models to interpret.

Loading is bounded before and while it works, so a hostile or broken file costs
little: at most ``MAX_BYTES`` of text, ``MAX_DEPTH`` levels of nesting, ``MAX_ALIAS_NODES``
values added by expanding aliases (a "billion laughs" file is refused, not expanded),
no alias that contains itself, and numbers of at most ``MAX_NUMBER_CHARS`` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

Path_ = tuple[str | int, ...]

#: a config file larger than this is refused before it is parsed (a 50,000-channel
#: config is about 10 MB)
MAX_BYTES = 32 * 2**20
#: nesting deeper than this is refused (a config needs about 8)
MAX_DEPTH = 64
#: values an alias may add when expanded, over the whole document (the values written
#: in the file are bounded by its size)
MAX_ALIAS_NODES = 100_000
#: digits of a number, at most (a register address or a limit needs a few)
MAX_NUMBER_CHARS = 64

_INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
_HEX = re.compile(r"^0x[0-9a-fA-F_]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOATS = {
    ".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf"),
    ".nan": float("nan"), ".Inf": float("inf"), "-.Inf": float("-inf"), ".NaN": float("nan"),
}


class _PlainTags:
    """Composer only: every plain scalar is left as a string-tagged node."""

    _TAGS: ClassVar[dict[type, str]] = {
        yaml.ScalarNode: "tag:yaml.org,2002:str",
        yaml.SequenceNode: "tag:yaml.org,2002:seq",
        yaml.MappingNode: "tag:yaml.org,2002:map",
    }

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        # what the base resolver returns with no implicit and no path resolvers, without
        # its per-node walk (a third of the load time of a 10,000-channel file)
        return self._TAGS[kind]


class _Loader(_PlainTags, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The fast composer (libyaml). It recurses in C: deep nesting would overflow the C
    stack (a crash, not an exception), so deep-looking text goes to ``_PyLoader``."""


class _PyLoader(_PlainTags, yaml.SafeLoader):
    """The pure-Python composer: deep nesting ends in RecursionError, which we report."""


# No implicit resolvers: we resolve scalars ourselves (see module docstring).
_Loader.yaml_implicit_resolvers = {}
_PyLoader.yaml_implicit_resolvers = {}

_OPENERS = re.compile(r"[\[{]")
_DASHES = re.compile(r"^(?:[ \t]*-[ \t]+){32}", re.M)


def _may_nest_deeply(text: str) -> bool:
    """Cheap and conservative: more than 64 flow brackets in the file, or a line that opens
    32 block sequences ("- - - ..."). Quoted brackets count too: a false alarm only costs
    the slower composer."""
    n = 0
    for _ in _OPENERS.finditer(text):
        n += 1
        if n > MAX_DEPTH:
            return _flow_depth(text) > MAX_DEPTH
    return _DASHES.search(text) is not None


def _flow_depth(text: str) -> int:
    depth = best = 0
    for m in re.finditer(r"[\[{\]}]", text):
        depth += 1 if m.group() in "[{" else -1
        best = max(best, depth)
        if best > MAX_DEPTH:
            break
    return best


@dataclass
class Mark:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class Source:
    """A loaded YAML document: the plain data and where each path was written."""

    file: str
    data: Any
    marks: dict[Path_, Mark] = field(default_factory=dict)
    key_marks: dict[Path_, Mark] = field(default_factory=dict)
    #: the text of every unquoted scalar that became a number, as written (``1.10``)
    texts: dict[Path_, str] = field(default_factory=dict)

    def where(self, path: Path_) -> Mark:
        """The mark of the longest prefix of ``path`` that exists in the document.

        Path components that are not in the document (pydantic adds union tags such
        as ``'modbus-tcp'``) are skipped rather than ending the walk.
        """
        best: Path_ = ()
        cur: Path_ = ()
        for part in path:
            cand = (*cur, part)
            if cand in self.marks:
                cur = cand
                best = cand
        # an unknown key: point at the key itself when we know it
        if path and (*best, path[-1]) in self.key_marks:
            return self.key_marks[(*best, path[-1])]
        return self.marks.get(best, Mark(1, 1))

    def real_path(self, path: Path_) -> Path_:
        cur: Path_ = ()
        for part in path:
            cand = (*cur, part)
            if cand in self.marks or cand in self.key_marks:
                cur = cand
        return cur


def dotted(path: Path_) -> str:
    """``('devices', 0, 'poll')`` → ``devices[0].poll``; the empty path is ``(top)``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top)"


class YamlError(Exception):
    """A file that is not valid YAML (or uses what we refuse), as ``FILE:LINE:COL: where: what``.

    ``where`` is the key path when known, ``(syntax)`` for a syntax error.
    """

    def __init__(self, file: str, line: int, col: int, message: str, where: str = "(syntax)"):
        super().__init__(f"{file}:{line}:{col}: {where}: {message}")
        self.file, self.line, self.col, self.message, self.where = file, line, col, message, where


def _scalar(node: yaml.ScalarNode) -> Any:
    v = node.value
    if node.style in ("'", '"', "|", ">"):
        return v
    if node.tag not in ("tag:yaml.org,2002:str", "?") and not node.tag.startswith("tag:yaml.org,2002:"):
        return v
    if v in ("", "~", "null", "Null", "NULL"):
        return None
    if v in ("true", "True", "TRUE"):
        return True
    if v in ("false", "False", "FALSE"):
        return False
    if _INT.match(v):
        return int(v.replace("_", ""))
    if _HEX.match(v):
        return int(v[2:].replace("_", ""), 16)
    if _FLOAT.match(v) and any(c in v for c in ".eE"):
        return float(v)
    if v in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[v]
    return v


class _Budget:
    """What building one document may still spend, and the nodes on the current path
    (an alias that contains itself would otherwise recurse for ever)."""

    __slots__ = ("alias_nodes", "built", "open")

    def __init__(self) -> None:
        self.alias_nodes = MAX_ALIAS_NODES
        self.built: set[int] = set()
        self.open: set[int] = set()


def _build(node: yaml.Node, path: Path_, src: Source, budget: _Budget) -> Any:
    def fail(message: str) -> YamlError:
        mark = node.start_mark
        return YamlError(src.file, mark.line + 1, mark.column + 1, message, dotted(path))

    if id(node) in budget.built:  # a node met again: an alias being expanded
        budget.alias_nodes -= 1
        if budget.alias_nodes < 0:
            raise fail(f"aliases expand to more than {MAX_ALIAS_NODES:,} values (aliases repeated "
                       "inside aliases?); write the values out")
    else:
        budget.built.add(id(node))
    if len(path) > MAX_DEPTH:
        raise fail(f"nested deeper than {MAX_DEPTH} levels")
    src.marks[path] = Mark(node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        if len(node.value) > MAX_NUMBER_CHARS and node.style not in ("'", '"', "|", ">") and (
                _INT.match(node.value) or _HEX.match(node.value) or _FLOAT.match(node.value)):
            raise fail(f"a number of {len(node.value)} characters; at most {MAX_NUMBER_CHARS}")
        v = _scalar(node)
        if isinstance(v, int | float) and not isinstance(v, bool):
            src.texts[path] = node.value
        return v
    if id(node) in budget.open:
        raise fail("an alias that contains itself (a recursive anchor)")
    budget.open.add(id(node))
    try:
        return _build_collection(node, path, src, budget)
    finally:
        budget.open.discard(id(node))


def _build_collection(node: yaml.Node, path: Path_, src: Source, budget: _Budget) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, (*path, i), src, budget) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge" or (
                isinstance(knode, yaml.ScalarNode) and knode.value == "<<" and not knode.style
            ):
                raise YamlError(
                    src.file, knode.start_mark.line + 1, knode.start_mark.column + 1,
                    "merge keys (<<) are not supported: write the keys out", dotted(path),
                )
            if not isinstance(knode, yaml.ScalarNode):
                raise YamlError(
                    src.file, knode.start_mark.line + 1, knode.start_mark.column + 1,
                    "mapping keys must be plain strings", dotted(path),
                )
            key = knode.value  # keys are always strings: `on:` stays "on"
            if key in out:
                first = src.key_marks[(*path, key)]
                raise YamlError(
                    src.file, knode.start_mark.line + 1, knode.start_mark.column + 1,
                    f"duplicate key {key!r} (first at line {first.line}); keep one", dotted((*path, key)),
                )
            src.key_marks[(*path, key)] = Mark(knode.start_mark.line + 1, knode.start_mark.column + 1)
            out[key] = _build(vnode, (*path, key), src, budget)
        return out
    raise YamlError(src.file, node.start_mark.line + 1, node.start_mark.column + 1, "unsupported YAML node",
                    dotted(path))


def load_text(text: str, file: str = "<string>") -> Source:
    src = Source(file=file, data=None)
    if len(text) > MAX_BYTES:
        raise YamlError(file, 1, 1, f"{len(text):,} characters is too large for a config file "
                        f"(at most {MAX_BYTES:,})", "(file)")
    try:
        node = yaml.compose(text, Loader=_PyLoader if _may_nest_deeply(text) else _Loader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = str(e.problem or e)
        cm = e.context_mark
        if e.context and cm is not None and (cm.line + 1, cm.column + 1) != (line, col):
            msg += f" ({e.context} that started at line {cm.line + 1}, column {cm.column + 1})"
        lines = text.splitlines()
        if 0 < line <= len(lines) and "\t" in lines[line - 1][:col]:
            msg += "; YAML indents with spaces, not tabs"
        raise YamlError(file, line, col, msg) from None
    except yaml.YAMLError as e:  # reader errors (control characters, ...)
        raise YamlError(file, 1, 1, str(e)) from None
    except RecursionError:
        raise YamlError(file, 1, 1, f"nested too deeply (at most {MAX_DEPTH} levels)") from None
    if node is None:
        src.data = {}
        return src
    src.data = _build(node, (), src, _Budget())
    return src


def load_file(path: str | Path) -> Source:
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size > MAX_BYTES:
            raise YamlError(str(path), 1, 1, f"{p.stat().st_size:,} bytes is too large for a config file "
                            f"(at most {MAX_BYTES:,})", "(file)")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise YamlError(str(path), 1, 1, "file not found", "(file)") from None
    except IsADirectoryError:
        raise YamlError(str(path), 1, 1, "is a directory, not a config file", "(file)") from None
    except PermissionError:
        raise YamlError(str(path), 1, 1, "permission denied", "(file)") from None
    except UnicodeDecodeError as e:
        raise YamlError(str(path), 1, 1, f"not UTF-8 text ({e.reason} at byte {e.start})", "(file)") from None
    return load_text(text, str(path))

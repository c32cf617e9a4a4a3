"""Resource files for ``apply|create|replace|delete -f``: bytes -> UTF-8 -> YAML -> validated resources.

Every way a file can be unusable (missing, a directory, not UTF-8, not YAML, an alias bomb, a bad
resource) becomes one ``UsageError`` naming the file and the document, line or field. Aliases are
counted on the composed node graph before anything is constructed: a "billion laughs" document is a
few kilobytes of text but expands to gigabytes, so it is refused without ever being expanded.
Reads the file or stdin; otherwise pure.
"""
from __future__ import annotations

import sys

import yaml

from crds import InvalidResource, Resource, load

MAX_FILE_BYTES = 16 << 20
# How many nodes aliases may add to one document. Real resources use none; a few anchors for repeated
# labels stay far below this.
MAX_ALIAS_EXPANSION = 10_000
_CAP = 1 << 62  # counts stop growing here, so a bomb costs no big-integer arithmetic


class UsageError(Exception):
    """Bad input from the user: printed with the field and reason, exit code 2."""


def source_name(filename: str) -> str:
    return "<stdin>" if filename == "-" else filename


def read_text(filename: str) -> str:
    """The file (or stdin for ``-``) as text; every OS or encoding failure is a one-line UsageError."""
    source = source_name(filename)
    try:
        if filename == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(filename, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{source}: is a directory, not a file") from None
    except PermissionError:
        raise UsageError(f"{source}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(f"{source}: larger than {MAX_FILE_BYTES >> 20} MiB; refusing to read it")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start})") from None


def parse(text: str, source: str) -> list[dict]:
    """The wire documents of a YAML/JSON stream, ``<Kind>List`` items flattened, empty ones dropped."""
    docs: list = []
    for index, node in enumerate(_compose_all(text, source), start=1):
        check_aliases(node, f"{source}: document {index}")
        doc = _construct(node, source)
        if doc is None:
            continue
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and "items" in doc:
            if not isinstance(doc["items"], list):
                raise UsageError(f"{source}: document {index}: items: must be a list")
            docs.extend(doc["items"])
        else:
            docs.append(doc)
    for position, doc in enumerate(docs, start=1):
        if not isinstance(doc, dict):
            raise UsageError(f"{source}: resource {position}: a resource must be a mapping, "
                             f"not {type(doc).__name__}")
    return docs


def read_documents(filename: str) -> list[Resource]:
    """Every resource in the file, validated; the first bad one raises UsageError (nothing is used)."""
    docs = parse(read_text(filename), source_name(filename))
    try:
        return [load(d) for d in docs]
    except InvalidResource as exc:
        raise UsageError(str(exc)) from None


def _compose_all(text: str, source: str):
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            yield loader.get_node()
    except yaml.MarkedYAMLError as exc:
        raise UsageError(f"{source}: {_yaml_error(exc)}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: YAML error: {_one_line(str(exc))}") from None
    except RecursionError:
        raise UsageError(f"{source}: YAML nested too deeply") from None
    finally:
        loader.dispose()


def _construct(node: yaml.Node, source: str):
    try:
        return yaml.SafeLoader("").construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise UsageError(f"{source}: {_yaml_error(exc)}") from None
    except RecursionError:
        raise UsageError(f"{source}: YAML nested too deeply") from None


def _yaml_error(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    what = ": ".join(p for p in (exc.context, exc.problem) if p)
    return f"YAML error at {where}{_one_line(what)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def check_aliases(root: yaml.Node, where: str) -> None:
    """Refuse a document whose aliases would add more than MAX_ALIAS_EXPANSION nodes, or that refers
    to itself. Counts on the node graph with memoisation, so a bomb costs its text size, no more."""
    expanded, distinct = expanded_size(root, where)
    if expanded - distinct > MAX_ALIAS_EXPANSION:
        raise UsageError(f"{where}: YAML aliases expand it by more than {MAX_ALIAS_EXPANSION} "
                         "nodes; refusing to load it")


def expanded_size(root: yaml.Node, where: str) -> tuple[int, int]:
    """(nodes once every alias is expanded, capped at _CAP; distinct nodes). Iterative: deep documents
    must not hit Python's recursion limit here."""
    size: dict[int, int] = {}
    on_path: set[int] = set()  # the ancestors of the node being visited: meeting one is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size[key] = min(_CAP, 1 + sum(size[id(c)] for c in _children(node)))
        elif key in on_path:
            raise UsageError(f"{where}: a YAML alias refers to a node that contains it")
        elif key not in size:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))
    return size[id(root)], len(size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []

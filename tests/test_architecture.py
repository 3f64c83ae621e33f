"""The house rules, drawn from the code itself: every import points down the layers, no module
imports itself back through others, modules read in one sitting and functions on one screen.

The layers are declared once, in :data:`LAYERS`; ``docs/architecture.md`` describes each module
in a table under its layer's heading, and :func:`test_the_architecture_page_lists_every_module_in_its_layer`
keeps the two in step. Every import counts: those at module level, those inside functions,
``from snnet import x`` (the module ``x`` when there is one), relative imports, and the imports
``snnet/__init__.py`` (``_PUBLIC``) and ``snnet.cli`` (``COMMANDS``) make by name on first use.
Imports under ``if TYPE_CHECKING:`` never run: they must still point down the layers, but are
left out of the cycle count (``train.checkpoint`` names ``TrainConfig`` of the loop that runs it).

Run ``python tests/test_architecture.py`` to print the graph's summary.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "snnet"
DOCS = ROOT / "docs" / "architecture.md"

#: The layers, first the one everything builds on: a module imports from its own layer and the
#: layers before it, never from one after it. (layer heading in docs/architecture.md, modules)
LAYERS: list[tuple[str, list[str]]] = [
    ("Values and files", ["snnet.stitch", "snnet.presets", "snnet.files", "snnet.rundir",
                          "snnet.threads", "snnet.settings", "snnet.data.config",
                          "snnet.artifact", "snnet.data.geometry", "snnet.task",
                          "snnet.lazy"]),
    ("Models", ["snnet.adapters", "snnet.adapters.*", "snnet.parts", "snnet.cost", "snnet.layers",
                "snnet.cuts", "snnet.space", "snnet.peft", "snnet.network", "snnet.zoo",
                "snnet.sources", "snnet.batchnorm", "snnet.lstsq", "snnet.dense",
                "snnet.dense.*"]),
    ("Data", ["snnet.data", "snnet.data.sample", "snnet.data.augment", "snnet.data.sources",
              "snnet.data.images", "snnet.data.batches", "snnet.data.resolve",
              "snnet.data.anchors", "snnet.data.dense", "snnet.data.canvas",
              "snnet.data.dense_data"]),
    ("Saved networks", ["snnet.serialize"]),
    ("Measuring", ["snnet.measure", "snnet.measure.*"]),
    ("Training", ["snnet.train", "snnet.train.*"]),
    ("Deploying", ["snnet.export", "snnet.export.*"]),
    ("Programs", ["snnet.demo", "snnet.dense_demo", "snnet.control", "snnet.control.*", "snnet.serve",
                  "snnet.serve.*"]),
    ("Commands", ["snnet", "snnet.__main__", "snnet.cli", "snnet.cli.*"]),
]  # fmt: skip

#: A module longer than this says why at its top: a docstring paragraph starting with the marker.
MAX_MODULE_LINES = 500
LONG_MODULE_MARKER = "Why one long module:"
#: From a function's ``def`` line to its last line.
MAX_FUNCTION_LINES = 80

# Exceptions, each with its reason; an entry that is no longer needed fails the test.
ALLOWED_LONG_MODULES: set[str] = set()
ALLOWED_LONG_FUNCTIONS: set[str] = set()
ALLOWED_IMPORTS: set[tuple[str, str]] = set()  # (importer, imported)


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


@dataclass
class Graph:
    modules: dict[str, Path]
    imports: list[Import] = field(default_factory=list)

    def edges(self, *, type_only: bool = True) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for i in self.imports:
            if type_only or not i.type_only:
                out[i.source].add(i.target)
        return out


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (``typing.TYPE_CHECKING`` too)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _lazy_imports(name: str, tree: ast.Module) -> list[tuple[str, int]]:
    """Modules imported by name on first use: ``snnet.__getattr__`` (``_PUBLIC``) and the commands
    of ``snnet.cli`` (``COMMANDS``)."""
    wanted = {"snnet": ("_PUBLIC", "{}"), "snnet.cli": ("COMMANDS", "snnet.cli.{}")}.get(name)
    if wanted is None:
        return []
    variable, pattern = wanted
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == variable:
            keys = ast.literal_eval(node.value).keys()
            return [(pattern.format(k), node.lineno) for k in keys]
    raise AssertionError(f"{name} no longer defines {variable}: update _lazy_imports")


def build_graph() -> Graph:
    """Every module of ``src/snnet`` and every import between them."""
    graph = Graph({module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))})

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in graph.modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for name, path in graph.modules.items():
        tree = ast.parse(path.read_text(), str(path))
        type_only = _type_checking_nodes(tree)
        package = name if _is_package(path) else name.rpartition(".")[0]
        found: list[tuple[str | None, int, bool]] = []
        for node in ast.walk(tree):
            flag = id(node) in type_only
            if isinstance(node, ast.Import):
                found += [(resolve(a.name), node.lineno, flag) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from .x import y, from .. import z
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                for alias in node.names:  # `from snnet import zoo` imports the module snnet.zoo
                    full = f"{origin}.{alias.name}"
                    found.append(
                        (full if full in graph.modules else resolve(origin), node.lineno, flag)
                    )
        found += [(resolve(target), line, False) for target, line in _lazy_imports(name, tree)]
        seen: set[tuple[str, bool]] = set()
        for target, line, flag in found:
            if target is None or target == name or (target, flag) in seen:
                continue
            seen.add((target, flag))
            graph.imports.append(Import(name, target, line, flag))
    return graph


def layer_of(module: str) -> int:
    hits = [
        i
        for i, (_, globs) in enumerate(LAYERS)
        if any(fnmatch.fnmatchcase(module, g) for g in globs)
    ]
    assert len(hits) == 1, (
        f"{module} is in {len(hits)} layers: name it in exactly one of LAYERS (and in "
        "docs/architecture.md under that layer)"
    )
    return hits[0]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def floors(edges: dict[str, set[str]]) -> dict[str, int]:
    """Each module's floor: 0 when it imports no other module, else one above its highest import
    (imports that run, in an acyclic graph)."""
    floor: dict[str, int] = {}

    def of(v: str) -> int:
        if v not in floor:
            floor[v] = 1 + max((of(w) for w in edges[v]), default=-1)
        return floor[v]

    for v in edges:
        of(v)
    return floor


def upward(graph: Graph) -> list[Import]:
    return [
        i
        for i in graph.imports
        if layer_of(i.target) > layer_of(i.source) and (i.source, i.target) not in ALLOWED_IMPORTS
    ]


def summary(graph: Graph) -> dict[str, int]:
    running = graph.edges(type_only=False)
    return {
        "modules": len(graph.modules),
        "imports": len({(i.source, i.target) for i in graph.imports}),
        "type_only_imports": sum(
            i.type_only and i.target not in running[i.source] for i in graph.imports
        ),
        "layers": len(LAYERS),
        "floors": 1 + max(floors(running).values()) if not cycles(running) else -1,
        "cycles": len(cycles(running)),
        "upward": len(upward(graph)),
    }


# -- the rules -------------------------------------------------------------------------------------
def test_every_import_points_down_the_layers():
    graph = build_graph()
    bad = [
        f"{i.source} (line {i.line}, layer {LAYERS[layer_of(i.source)][0]!r}) imports {i.target} "
        f"(layer {LAYERS[layer_of(i.target)][0]!r})"
        for i in upward(graph)
    ]
    assert not bad, "imports pointing up the layers:\n" + "\n".join(bad)
    stale = {
        (s, t)
        for s, t in ALLOWED_IMPORTS
        if not any(i.source == s and i.target == t for i in graph.imports)
    } | {(s, t) for s, t in ALLOWED_IMPORTS if layer_of(t) <= layer_of(s)}
    assert not stale, f"allowed but no longer needed, remove from ALLOWED_IMPORTS: {sorted(stale)}"


def test_no_module_imports_itself_back():
    found = cycles(build_graph().edges(type_only=False))
    assert not found, (
        "import cycles (modules that import each other, directly or through the others):\n"
        + "\n".join(", ".join(c) for c in found)
    )


def test_modules_read_in_one_sitting():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        says_why = any(p.startswith(LONG_MODULE_MARKER) for p in re.split(r"\n\s*\n", doc))
        if lines > MAX_MODULE_LINES and not says_why:
            long[str(path.relative_to(PACKAGE.parent))] = lines
    over = {k: v for k, v in long.items() if k not in ALLOWED_LONG_MODULES}
    assert not over, (
        f"modules over {MAX_MODULE_LINES} lines: {over}; split them by concept, or say why at the "
        f"top (a docstring paragraph starting {LONG_MODULE_MARKER!r})"
    )
    stale = ALLOWED_LONG_MODULES - set(long)
    assert not stale, f"no longer too long, remove from ALLOWED_LONG_MODULES: {sorted(stale)}"


def _functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    out = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                out.append((name, node))
            out += _functions(node, f"{name}.")
        else:
            out += _functions(node, prefix)
    return out


def test_functions_fit_on_a_screen():
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name, node in _functions(ast.parse(path.read_text())):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(PACKAGE.parent)}:{name}"] = lines
    over = {k: v for k, v in long.items() if k not in ALLOWED_LONG_FUNCTIONS}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines from def to end: {over}"
    stale = ALLOWED_LONG_FUNCTIONS - set(long)
    assert not stale, f"no longer too long, remove from ALLOWED_LONG_FUNCTIONS: {sorted(stale)}"


# -- the page that states the layers ---------------------------------------------------------------
def documented_layers() -> list[tuple[str, set[str]]]:
    """docs/architecture.md's layers: each bold heading line (``**Models**``) and the modules its
    table names in its first column (``space.py``, ``adapters/{vit,swin}.py``; ``serve/`` names
    a whole folder)."""
    layers: list[tuple[str, set[str]]] = []
    for line in DOCS.read_text().splitlines():
        heading = re.match(r"^\*\*(.+?)\*\*", line)
        if heading:
            layers.append((heading[1], set()))
        elif layers and line.startswith("| `"):
            for cell in re.findall(r"`([^`]+)`", line.split("|")[1]):
                layers[-1][1].update(_expand(cell))
    return layers


def _expand(cell: str) -> set[str]:
    braces = re.match(r"^(.*)\{(.+)\}(.*)$", cell)
    if braces:
        return {m for part in braces[2].split(",") for m in _expand(braces[1] + part + braces[3])}
    if cell.endswith("/"):
        folder = PACKAGE / cell
        return {module_name(p) for p in folder.rglob("*.py")} | {
            module_name(folder / "__init__.py")
        }
    return {module_name(PACKAGE / cell)}


def test_the_architecture_page_lists_every_module_in_its_layer():
    documented = documented_layers()
    assert [name for name, _ in documented] == [name for name, _ in LAYERS], (
        f"the layers' headings in {DOCS.name} differ from LAYERS"
    )
    graph = build_graph()
    for i, (name, modules) in enumerate(documented):
        # Packages' __init__ modules re-export their folder: a row for each is not needed.
        code = {m for m in graph.modules if layer_of(m) == i and not _is_package(graph.modules[m])}
        modules = {
            m for m in modules if m not in graph.modules or not _is_package(graph.modules[m])
        }
        assert modules == code, (
            f"layer {name!r}: {DOCS.name} lists {sorted(modules - code)} that the code does not "
            f"have there, and misses {sorted(code - modules)}"
        )


if __name__ == "__main__":
    graph = build_graph()
    print(summary(graph))
    running = graph.edges(type_only=False)
    by_floor: dict[int, list[str]] = {}
    for m, f in sorted(floors(running).items()):
        by_floor.setdefault(f, []).append(m.removeprefix("snnet."))
    for f in sorted(by_floor, reverse=True):
        print(f"floor {f:2d}: {' '.join(by_floor[f])}")

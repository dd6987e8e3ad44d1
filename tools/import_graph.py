"""Check hafrm's imports: no cycles, layers imported downwards only, and function-local imports
only for heavy optional packages.

    python tools/import_graph.py            # exit 1, naming each, on a cycle, an upward or a stray import
    python tools/import_graph.py --graph    # print each module's hafrm imports

Every import counts, at module level or inside a function: a local import that points upwards is
still a dependency, only hidden. Imports under `if TYPE_CHECKING:` (annotations only) do not.
`from hafrm.pkg import name` is an edge to `hafrm.pkg.name` when that is a module, else to
`hafrm.pkg`. A module's parent packages are not counted (Python imports
them first, whatever the module needs).

The packages are layered: a module may import from its own package and from the layers below
it, never above (LAYERS, bottom first).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
# Imported inside functions on purpose: slow to import, or needed by one command only. A local
# import of anything else needs a reason on its line: `# lazy: <why>`.
LAYERS = [
    ("hafrm.version", "hafrm.errors", "hafrm.fileio", "hafrm.heads", "hafrm.distributed"),
    ("hafrm.data",),
    ("hafrm.modeling",),
    ("hafrm.objectives",),
    ("hafrm.config",),
    ("hafrm.evaluation",),
    ("hafrm.training",),
    ("hafrm.experiments",),
    ("hafrm.rlhf",),
    ("hafrm.apps",),
    ("hafrm", "hafrm.__main__"),
]
HEAVY = {"trl", "matplotlib", "datasets", "fastapi", "uvicorn", "huggingface_hub", "gguf", "peft", "httpx", "pyarrow"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> tuple[set[str], list[tuple[int, str]]]:
    """(hafrm modules imported, [(line, package)] of function-local imports that are not HEAVY)."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, str(path))
    edges: set[str] = set()
    local: list[tuple[int, str]] = []
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    in_function = {id(n) for f in functions for n in ast.walk(f) if n is not f}
    type_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            full = [f"{node.module}.{a.name}" for a in node.names]
            names = [name if name in modules else node.module for name in full]
        else:
            continue
        if id(node) in type_only:
            continue
        for name in names:
            if name.split(".")[0] == "hafrm":
                edges.add(name if name in modules else name.rpartition(".")[0])
        stray = sorted({n for n in names if n.split(".")[0] not in HEAVY})
        if id(node) in in_function and stray and "# lazy:" not in lines[node.lineno - 1]:
            local.append((node.lineno, ", ".join(stray)))
    return edges, local


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    """The index in LAYERS of the package `module` is in."""
    package = ".".join(module.split(".")[:2])
    return next(i for i, names in enumerate(LAYERS) if package in names or module in names)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a module to one in a higher layer."""
    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a]) if layer(b) > layer(a)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", action="store_true", help="print each module's hafrm imports")
    args = parser.parse_args()
    paths = {module_name(p): p for p in sorted((ROOT / "hafrm").rglob("*.py"))}
    graph, stray = {}, []
    for name, path in paths.items():
        graph[name], local = imports(path, set(paths))
        graph[name].discard(name)
        stray += [f"{path.relative_to(ROOT.parent)}:{line}: function-local import of {what}" for line, what in local]
    if args.graph:
        for name in sorted(graph):
            print(f"{name}: {', '.join(sorted(graph[name])) or '-'}")
    found = cycles(graph)
    for component in found:
        print("import cycle: " + " <-> ".join(component))
    up = upward(graph)
    for edge in up:
        print(f"import against the layers: {edge}")
    for line in stray:
        print(line)
    n_imports = sum(map(len, graph.values()))
    print(
        f"{len(paths)} modules, {n_imports} imports, {len(found)} cycles, {len(up)} against the layers, "
        f"{len(stray)} stray local imports"
    )
    return 1 if found or up or stray else 0


if __name__ == "__main__":
    sys.exit(main())

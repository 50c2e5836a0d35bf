"""No import circle among the modules of ``libs/`` and the top-level modules: the graph of
``libs.*`` imports, at any depth of a file (also inside functions), has no cycle. A package's
``__init__`` counts as the module ``libs.<package>``; importing a submodule does not count as
importing its package's ``__init__`` (Python runs it first, but it cannot close a circle that
the explicit imports do not)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph():
    paths = list((ROOT / "libs").rglob("*.py")) + list(ROOT.glob("*.py"))
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:  # ``from libs.exits import policy``: the submodule, if it is one
                    sub = f"{node.module}.{alias.name}"
                    edges.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        graph[name] = sorted(e for e in edges if e in modules and e != name)
    return graph


def _cycle(graph):
    """One import circle as a list of modules, or None (depth-first search, three colours)."""
    colour, stack = {}, []

    def visit(m):
        colour[m] = "grey"
        stack.append(m)
        for n in graph[m]:
            if colour.get(n) == "grey":
                return stack[stack.index(n):] + [n]
            if n not in colour:
                found = visit(n)
                if found:
                    return found
        colour[m] = "black"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in colour:
            found = visit(m)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert "libs.exits.registry" in graph["libs.exits.policy"]
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_no_import_circle():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)

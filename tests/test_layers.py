"""The packages' layering (docs/ARCHITECTURE.md): a lower layer never imports a higher one, and no module imports
itself back through others. Read from the source (every import statement, also inside functions), not from
what happens to be imported at run time; imports under `if TYPE_CHECKING:` are for annotations only."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each package may import the ones listed after it, never those before it.
LAYERS = ["tools", "builder", "dataset_card", "output", "map_fns"]
PACKAGES = [package for package in LAYERS if (REPO / package).is_dir()]


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Project modules named by the import statements of `tree`, skipping `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        named = _imported(ast.parse(path.read_text()), module, path.name == "__init__.py")
        graph[module] = {name for name in named if name in modules and name != module}
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_the_layers_are_all_there():
    assert PACKAGES == LAYERS


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_a_higher_layer(package):
    upward = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() if module.split(".")[0] == package
                    for target in targets if _layer(target) < _layer(module))
    assert not upward, upward


def test_no_import_cycles():
    """Tarjan's strongly connected components: any with more than one module is a cycle."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(GRAPH[module]):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    assert not cycles, cycles

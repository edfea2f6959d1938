"""The package's floors, drawn from its own imports: the core (ops, backends, validation, references, kernels, the
SiTo op) imports nothing above it, the diffusers integration (``sdxl``) imports only the core, the tools import
the two below; no module imports another that imports it back (function-level imports included)."""

import ast
import importlib.util
import re
from pathlib import Path

import atedm_kernels

PACKAGE = Path(atedm_kernels.__file__).parent
FLOORS = {"core": 0, "integration": 1, "tools": 2}
# The one import up a floor, kept for one release: the deprecated model builders' names in atedm_kernels.sdxl.
DEPRECATED_SHIMS = {("atedm_kernels.sdxl", "atedm_kernels.tools.models")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("tools", "__main__"):  # __main__: `python -m atedm_kernels`, the CLI
        return "tools"
    if len(parts) > 1 and parts[1] == "sdxl":
        return "integration"
    return "core"


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (relative imports resolved; ``from X import y``
    counts as X.y where that is a module), and those it names in ``import_module`` strings."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known}
    found |= set(re.findall(r"import_module\(\"(atedm_kernels[\w.]*)\"", path.read_text()))
    return {module for module in found if module in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, set(known)) - {name} for name, path in known.items()}


def test_no_import_runs_up_a_floor():
    upward = sorted((name, target) for name, targets in graph().items() for target in targets
                    if FLOORS[floor(target)] > FLOORS[floor(name)] and (name, target) not in DEPRECATED_SHIMS)
    assert upward == []


def test_no_import_circle():
    edges = graph()
    # a package's __init__ re-exporting its submodules is not a circle with them: drop package -> own submodule edges
    edges = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_root_holds_no_tool_module():
    root_modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert root_modules <= {"__init__", "__main__", "ops", "backends", "_validation"}, root_modules


def test_the_graph_sees_imports():
    """The test above cannot pass by seeing nothing: known edges are found."""
    edges = graph()
    assert "atedm_kernels.ops" in edges["atedm_kernels.sdxl.pruning"]
    assert "atedm_kernels.sdxl" in edges["atedm_kernels.tools.unet_bench"]
    assert "atedm_kernels.tools.demo_picture" in edges["atedm_kernels.tools.demo"]
    assert importlib.util.find_spec("atedm_kernels.tools.models") is not None

"""The package's import structure: no import circle, and every import points down the layers that
docs/architecture.md draws.

The graph is read from the source with `ast`, not by importing: every `import semdl...` and `from semdl... import`
statement anywhere in a module counts, at module level, inside function bodies (the lazy imports that keep torch
out of `semdl --help`) and under `if TYPE_CHECKING:` alike. A lazy or type-only import is still a dependency: a
circle through one is a circle a reader has to untangle. `from semdl.x import name` where `semdl.x.name` is a module
is an edge to that module; any other name is an edge to `semdl.x` (for a package, its `__init__`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import semdl

PACKAGE = Path(semdl.__file__).resolve().parent

# docs/architecture.md's layers, from the bottom up: a module imports only its own layer and the layers below it.
LAYERS = [
    [
        "semdl",
        "semdl.conf",
        "semdl.errors",
        "semdl.hooks",
        "semdl.registry",
        "semdl.schema",
        "semdl.objectives",
        "semdl.io",
    ],
    ["semdl.data", "semdl.models"],
    ["semdl.network"],
    ["semdl.solvers", "semdl.eval", "semdl.tracking"],
    ["semdl.checkpoint", "semdl.resources"],
    ["semdl.options", "semdl.validation"],
    ["semdl.pipeline", "semdl.inputs"],
    ["semdl.experiment"],
    ["semdl.composition", "semdl.search", "semdl.exits", "semdl.logs", "semdl.reports", "semdl.sweeps", "semdl.help"],
    ["semdl.cli", "semdl.__main__"],
]


def module_files() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Each semdl module and the semdl modules it imports (anywhere in its source)."""
    modules = module_files()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names if alias.name.split(".")[0] == "semdl"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "semdl":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else owner(node.module))
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                raise AssertionError(f"{path}: a relative import; semdl imports by absolute name")
        graph[name] = targets - {name}
    return graph


def layer_of(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return max(matches)[1]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_package_has_no_import_circle():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_circle_finder_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_imports_point_down_the_documented_layers():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_layers_are_the_ones_docs_architecture_draws():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawing = text.split("<!-- layers -->")[1]
    for layer in LAYERS:
        line = ", ".join(module.removeprefix("semdl.") if module != "semdl" else "semdl" for module in layer)
        assert line in drawing, f"docs/architecture.md's layer drawing lacks the line {line!r}"


BLOCK_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
"""


def test_the_schema_and_the_front_door_import_without_torch():
    """The schema, the composition helpers and the CLI module load in a process where importing torch fails."""
    code = BLOCK_TORCH + (
        "import semdl.schema, semdl.composition, semdl.errors, semdl.cli, semdl.io.run_directory, semdl.io.table\n"
        "from semdl.schema import Config\n"
        "from omegaconf import OmegaConf\n"
        "assert OmegaConf.structured(Config).nodes == 5\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_run_file_names_are_spelled_in_the_run_directory_module_only():
    """Every string constant of the package that is a run file's name (or a path ending in one) appears in
    semdl/io/run_directory.py and nowhere else."""
    from semdl.io import run_directory

    names = {
        value
        for key, value in vars(run_directory).items()
        if key.isupper() and isinstance(value, str) and ("." in value or key in ("CHECKPOINTS", "FIGURES"))
    } | set(run_directory.CSV_TABLES.values())
    assert {"metrics.jsonl", "summary.json", "eval.json", "last.pt", "failures.jsonl", ".semdl-writer.json"} <= names
    spelled = []
    for module, path in module_files().items():
        if module == "semdl.io.run_directory":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.split("/")[-1] in names:
                spelled.append(f"{module} line {node.lineno}: {node.value!r}")
    assert not spelled, "\n".join(spelled)


SOLVER_SHARED = {
    "semdl.solvers",
    "semdl.solvers.base",
    "semdl.solvers.common",
    "semdl.solvers.groups",
    "semdl.solvers.own_data",
}


def test_no_solver_module_imports_another_solver():
    """Solvers share code through semdl/solvers/common.py, own_data.py, groups.py and base.py, never by importing
    another solver's module."""
    graph = import_graph()
    solvers = [module for module in graph if module.startswith("semdl.solvers.") and module not in SOLVER_SHARED]
    assert {"semdl.solvers.primal_dual", "semdl.solvers.cluster_bcd", "semdl.solvers.local"} <= set(solvers)
    reaching = [f"{module} imports {target}" for module in solvers for target in graph[module] if target in solvers]
    assert not reaching, "\n".join(reaching)

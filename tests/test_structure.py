"""The package's layers only point down, and every module imports on its own in any order."""
import ast
import subprocess
import sys
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# Higher layers may import lower ones, never the reverse (../shared/ARCHITECTURE.md):
# cli -> api (+ evaluation, lab) -> training / inference -> tasks -> models / data -> leaves.
LAYERS = {
    "cli": 7, "serve": 7, "ui": 7,
    "evaluation": 6, "lab": 6, "quickstart": 6, "sweeps": 6, "runs": 6,
    "api": 5,
    "training": 4,
    "inference": 3,
    "tasks": 2,
    "models": 1, "data": 1,
    "config": 0, "io": 0, "metrics": 0, "errors": 0, "plugins": 0, "resources": 0,
}


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tunelab" and len(parts) > 1 else None


def _imports(path: Path, module: str) -> set[str]:
    """tunelab modules `path` imports anywhere (function-level included), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                 for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tunelab")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            if base == "tunelab":
                found |= {f"tunelab.{a.name}" for a in node.names}
            elif base.startswith("tunelab."):
                found.add(base)
    return found


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_package_has_a_layer():
    packages = {_package_of(m) for _, m in _modules()} - {None}
    assert packages <= set(LAYERS), f"give these a layer in LAYERS: {sorted(packages - set(LAYERS))}"


def test_layers_only_point_down_and_packages_form_no_cycle():
    upward, edges = [], {}
    for path, module in _modules():
        source = _package_of(module)
        if source is None:
            continue  # tunelab/__init__.py: the lazy public facade over every layer
        for target_module in _imports(path, module):
            target = _package_of(target_module)
            if target is None or target == source:
                continue
            edges.setdefault(source, set()).add(target)
            if LAYERS[target] > LAYERS[source]:
                upward.append(f"{module} -> {target_module}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)
    # Same-layer imports are allowed only while the package graph stays acyclic.
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [nxt])}"
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [node])


def test_the_layer_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from tunelab.training.recipe import train\nif TYPE_CHECKING:\n    import tunelab.cli\n")
    assert _imports(bad, "tunelab.data.bad") == {"tunelab.training.recipe"}


def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = [m for _, m in _modules()]
    # Reverse order too, so no module relies on another having been imported first.
    code = ("import importlib, sys\n"
            f"mods = {modules!r}\n"
            "for m in mods[::-1]:\n"
            "    importlib.import_module(m)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for m in modules[:3]:
        code = f"import importlib; importlib.import_module({m!r})"
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0, m

"""The house rules of the code, read from the source (DESIGN.md section 7): the top of stvit/ holds only commands and
the base; kernels/ is a leaf; the model never imports the trainer; no command imports another command and no
library module imports a command; and the import graph (every import, also those inside functions) has no
cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"stvit.train", "stvit.cv", "stvit.tune", "stvit.explain", "stvit.profile", "stvit.export", "stvit.flops",
            "stvit.predict", "stvit.embed", "stvit.report", "stvit.data.__main__", "stvit.model.__main__"}
BASE = {"stvit", "stvit.config", "stvit.errors", "stvit.rng", "stvit.cli"}
WINGS = ("data", "model", "training", "maps", "perf")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for d in ("stvit", "kernels") for p in (ROOT / d).rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its file: `import a.b`, `from a.b import c` (c itself when it
    is a module, else a.b), relative imports resolved."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import kernels.select` names a module; a name inside one is its module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_top_of_stvit_holds_only_commands_and_the_base():
    top = {m for m in modules() if m.count(".") == 1 and m.startswith("stvit.")} | {"stvit"}
    wings = {f"stvit.{w}" for w in WINGS}
    assert top - COMMANDS - BASE - wings == set()


def test_kernels_is_a_leaf():
    for name, deps in graph().items():
        if name.startswith("kernels"):
            assert not [d for d in deps if d.startswith("stvit")], name


def test_the_model_never_imports_training_and_the_base_no_wing():
    for name, deps in graph().items():
        if name.startswith("stvit.model"):
            assert not [d for d in deps if d.startswith(("stvit.training", "stvit.maps", "stvit.perf"))], name
        if name in BASE - {"stvit"}:
            assert not [d for d in deps if d.startswith(tuple(f"stvit.{w}" for w in WINGS))], name


def test_no_command_imports_a_command_and_no_library_module_imports_one():
    for name, deps in graph().items():
        assert not deps & COMMANDS, f"{name} imports the command(s) {sorted(deps & COMMANDS)}"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is an import cycle."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_the_checks_see_a_cycle_and_a_command_import(tmp_path):
    """The graph reader finds what it must: a function-level import of a command, and a cycle between two modules."""
    a = tmp_path / "stvit" / "training" / "x.py"
    a.parent.mkdir(parents=True)
    a.write_text("def f():\n    from stvit import train\n    from .y import g\n")
    (a.parent / "y.py").write_text("from stvit.training.x import f\n")
    known = {"stvit", "stvit.train", "stvit.training", "stvit.training.x", "stvit.training.y"}
    assert imports("stvit.training.x", a, known) == {"stvit.train", "stvit.training.y"}
    assert imports("stvit.training.y", a.parent / "y.py", known) == {"stvit.training.x"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

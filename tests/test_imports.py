"""The import graph of `xmfast/`: no cycles, and the library never imports the CLI.

The walker reads the source (ast), it imports nothing. What counts as an edge A -> B:

* every ``import``/``from ... import`` in A, at top level or inside a function or class (a
  function-level import is still a dependency; it only runs later), and
  ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name;
* relative imports, resolved against A's package;
* ``from P import x`` is an edge to ``P.x`` when that is a module (a ``.py``, a package, or an
  extension such as ``xmfast.core``), else to ``P``;
* NOT the imports under ``if TYPE_CHECKING:`` (they never execute, so they cannot make a cycle at
  run time; annotations are strings under ``from __future__ import annotations``);
* NOT the implicit import of a module's parent packages (``import xmfast.models.ncf`` runs
  ``xmfast/models/__init__.py`` too, but a package importing its own submodules is the normal
  layout, not a cycle).

A package's ``__init__.py`` is the package module. The xmfast_cli rule is stricter: the library
must not name the CLI at all, under TYPE_CHECKING included.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xmfast"



@dataclass
class ImportGraph:
    """Modules of one package, `edges[a][b]` = where (file:line) module a first imports module b,
    and `forbidden` = where a module imports one of the forbidden top-level packages."""

    modules: set[str]
    edges: dict[str, dict[str, str]] = field(default_factory=dict)
    forbidden: list[str] = field(default_factory=list)


def _module_names(package_dir: Path) -> dict[str, Path | None]:
    """Dotted name -> source file (None for an extension or stub without source)."""
    package = package_dir.name
    names: dict[str, Path | None] = {}
    for path in sorted(package_dir.rglob("*")):
        rel = path.relative_to(package_dir)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        parts = [package, *rel.parts[:-1]]
        stem = path.name.split(".")[0]  # core.cpython-311-x86_64-linux-gnu.so -> core
        if path.suffix == ".py":
            names[".".join(parts if stem == "__init__" else [*parts, stem])] = path
        elif path.suffix in (".so", ".pyd", ".pyi") and stem != "__init__":
            names.setdefault(".".join([*parts, stem]), None)
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """(node, imported names, under TYPE_CHECKING) for every import statement and literal dynamic
    import; a name is (dotted module, imported attribute or None, relative level)."""

    def visit(node: ast.AST, typing_only: bool):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, True)
            for child in node.orelse:
                yield from visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            yield node, [(a.name, None, 0) for a in node.names], typing_only
        elif isinstance(node, ast.ImportFrom):
            yield node, [(node.module or "", a.name, node.level) for a in node.names], typing_only
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node, [(node.args[0].value, None, 0)], typing_only
        for child in ast.iter_child_nodes(node):
            yield from visit(child, typing_only)

    yield from visit(tree, False)


def import_graph(package_dir: Path, forbidden: tuple[str, ...] = ("xmfast_cli",)) -> ImportGraph:
    """The module graph of the package at `package_dir` (its directory name is the package name)."""
    package = package_dir.name
    files = _module_names(package_dir)
    graph = ImportGraph(set(files))

    def owner(dotted: str) -> str | None:
        """The longest prefix of `dotted` that is a module of the package."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in files:
                return ".".join(parts[:n])
        return None

    for module, path in files.items():
        if path is None:
            continue
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, names, typing_only in _imports(tree):
            where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
            for base, attr, level in names:
                if level:
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    if level - 1 >= len(anchor):
                        continue  # beyond the top-level package: not ours
                    anchor = anchor[: len(anchor) - (level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                top = base.split(".")[0]
                if top in forbidden:
                    graph.forbidden.append(f"{where}: imports {base}")
                if typing_only or top != package:
                    continue
                target = f"{base}.{attr}" if attr and f"{base}.{attr}" in files else owner(base)
                if target is not None and target != module:
                    graph.edges.setdefault(module, {}).setdefault(target, where)
    return graph


def strongly_connected(graph: ImportGraph) -> list[set[str]]:
    """Tarjan's components with more than one module (self-imports are not edges)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.edges.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph.modules):
        if v not in index:
            connect(v)
    return out


def cycle_path(graph: ImportGraph, component: set[str]) -> str:
    """One cycle through the component's first module, each step with the line that imports."""
    start = min(component)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first, inside the component, back to `start`
        nxt = []
        for v in frontier:
            for w in sorted(graph.edges.get(v, {})):
                if w not in component:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    path.reverse()
                    path.append(start)
                    return "\n".join(f"  {a} -> {b}  ({graph.edges[a][b]})" for a, b in zip(path, path[1:]))
                if w not in parent and w != start:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle found in {component}")  # cannot happen for a real component


def cycle_report(graph: ImportGraph, allowed: frozenset[frozenset[str]] = frozenset()) -> list[str]:
    """One message per cycle not in `allowed` (exact module sets)."""
    return [
        f"import cycle among {', '.join(sorted(c))}:\n{cycle_path(graph, c)}"
        for c in strongly_connected(graph)
        if frozenset(c) not in allowed
    ]


# -- xmfast itself -------------------------------------------------------------------------------


def test_xmfast_has_no_import_cycle() -> None:
    problems = cycle_report(import_graph(PACKAGE), frozenset())
    assert not problems, "\n".join(problems)


def test_models_and_training_do_not_import_each_other() -> None:
    """The model API is below the engine: training imports models, never the reverse (a model's
    own engine is named by a hook that imports it lazily, inside xmfast.models.builtin)."""
    edges = import_graph(PACKAGE).edges
    assert "xmfast.models" in edges["xmfast.training.engine"]
    assert not [m for m in ("xmfast.models", "xmfast.models.api") for t in edges.get(m, {}) if t.startswith("xmfast.training")]


def test_evaluation_and_trec_do_not_import_each_other() -> None:
    edges = import_graph(PACKAGE).edges
    assert "xmfast.evaluation" in edges["xmfast.trec"]
    assert "xmfast.trec" not in edges.get("xmfast.evaluation", {})


def test_library_does_not_import_the_cli() -> None:
    graph = import_graph(PACKAGE)
    assert not graph.forbidden, "\n".join(graph.forbidden)


def test_the_walker_sees_xmfast() -> None:
    """Guards against a walker that silently finds nothing (and so no cycle)."""
    graph = import_graph(PACKAGE)
    assert {"xmfast", "xmfast.core", "xmfast.evaluation", "xmfast.models", "xmfast.models.ncf"} <= graph.modules
    assert "xmfast.core" in graph.edges["xmfast.evaluation"]  # `from xmfast import _trec_format, core`
    assert "xmfast._trec_format" in graph.edges["xmfast.evaluation"]


# -- what the commands import when they run -------------------------------------------------------

# Runs the CLI's commands one after the other in one fresh interpreter (outside the checkout, so
# the installed packages are the ones imported), with a meta-path hook that records and refuses
# every import of torch: a command that needs no neural model must not even try (torch takes
# seconds to import; see benchmarks/bench_startup.py). Prints, per command, the torch modules it
# tried and whether it failed.
NO_TORCH = """
import json, sys
tried = []
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")
        return None
sys.meta_path.insert(0, Refuse())
from xmfast_cli.app import app
seen = {}
for argv in json.loads(sys.argv[1]):
    del tried[:]
    try:
        app(argv, standalone_mode=False)
        failed = False
    except BaseException:
        failed = True
    seen[argv[0] + " " + argv[-1]] = {"tried": sorted(set(tried)), "failed": failed}
seen["scipy.stats"] = "scipy.stats" in sys.modules
seen["pydantic"] = "pydantic" in sys.modules
seen["scipy"] = sorted(m for m in sys.modules if m.split(".")[0] == "scipy")[:3]
print(json.dumps(seen))
"""


def _commands_run(commands: list[list[str]], cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, json.dumps(commands)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {"stdout": proc.stdout, **json.loads(proc.stdout.splitlines()[-1])}


def test_commands_without_a_neural_model_import_no_torch(dataset: Path, tmp_path: Path) -> None:
    """`models`, `evaluate --scores`, `compare`, `report`, and `evaluate`/`recommend` of runs of
    models without training (pop, cooc) never try to import torch, nor scipy (`compare --tests`
    alone needs scipy.stats), nor pydantic (typer 0.29 converts values with it; xmfast_cli
    converts its plain values itself). `train -m gmf` is the control: the same hook sees it try."""
    import numpy as np

    from xmfast.dataset import PreparedDataset
    from xmfast.models import get_model
    from xmfast.runs import save_scores_run
    from xmfast.training import TrainConfig, train

    ds = PreparedDataset.load(dataset)
    for name in ("pop", "cooc"):
        train(ds, tmp_path / name, name, get_model(name).config_type(), TrainConfig())
    scores = tmp_path / "scores.npy"
    np.save(scores, np.random.default_rng(0).random(ds.test.candidates.shape))
    save_scores_run(tmp_path / "mine", ds, np.load(scores), label="mine", scores_file=scores)
    user = ds.users[int(ds.group_user[ds.group_market == ds.market_index(ds.target)][0])]
    pop, cooc, mine = (str(tmp_path / n) for n in ("pop", "cooc", "mine"))
    commands = [
        ["models"], ["models", "cooc"],
        ["evaluate", str(dataset), "--scores", str(scores)], ["evaluate", pop], ["evaluate", cooc],
        ["recommend", pop, "--user", user], ["recommend", cooc, "--user", user],
        ["compare", pop, mine],
        ["report", pop, cooc, mine, "-o", str(tmp_path / "report.md"), "--no-plots"],
        ["train", str(dataset), "-m", "gmf", "-o", str(tmp_path / "gmf")],  # the control
    ]
    seen = _commands_run(commands, tmp_path)
    assert seen.pop("train " + str(tmp_path / "gmf")) == {"tried": ["torch"], "failed": True}
    assert seen.pop("scipy.stats") is False
    assert seen.pop("pydantic") is False
    assert seen.pop("scipy") == []  # the t-test's p-value and cooc's scores are the core's (0.2 s of import)
    assert user in seen.pop("stdout") and (tmp_path / "report.md").is_file()  # the commands did their work
    assert seen == {f"{c[0]} {c[-1]}": {"tried": [], "failed": False} for c in commands[:-1]}


# -- the walker, on synthetic packages -----------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "pkg"


def test_a_cycle_through_a_function_level_import_fails(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import g\n",
        "b.py": "def g():\n    from pkg import a\n    return a\n",
        "c.py": "import pkg.a\n",
    })
    graph = import_graph(pkg)
    assert strongly_connected(graph) == [{"pkg.a", "pkg.b"}]
    (problem,) = cycle_report(graph)
    assert problem == "import cycle among pkg.a, pkg.b:\n  pkg.a -> pkg.b  (pkg/a.py:1)\n  pkg.b -> pkg.a  (pkg/b.py:2)"
    assert cycle_report(graph, frozenset({frozenset({"pkg.a", "pkg.b"})})) == []
    # the allow-list is exact: a larger cycle is not covered by a smaller entry
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "b.py").write_text("import pkg.c\ndef g():\n    from pkg import a\n")
    assert cycle_report(import_graph(pkg), frozenset({frozenset({"pkg.a", "pkg.b"})}))


def test_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import g\n",
        "b.py": """\
            import typing
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.a import A
            if typing.TYPE_CHECKING:
                import pkg.a
            else:
                import pkg.c
            def g(): ...
        """,
        "c.py": "",
    })
    graph = import_graph(pkg)
    assert strongly_connected(graph) == []
    assert graph.edges == {"pkg.a": {"pkg.b": "pkg/a.py:1"}, "pkg.b": {"pkg.c": "pkg/b.py:8"}}


def test_relative_package_and_dynamic_imports(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "from .sub import thing\n",
        "sub/__init__.py": "from .mod import thing\nfrom . import other\n",
        "sub/mod.py": "from ..sub import other\nthing = 1\n",
        "sub/other.py": "import importlib\ndef f():\n    return importlib.import_module('pkg')\n",
        "ext.pyi": "",
    })
    graph = import_graph(pkg)
    assert graph.edges == {
        "pkg": {"pkg.sub": "pkg/__init__.py:1"},
        "pkg.sub": {"pkg.sub.mod": "pkg/sub/__init__.py:1", "pkg.sub.other": "pkg/sub/__init__.py:2"},
        "pkg.sub.mod": {"pkg.sub.other": "pkg/sub/mod.py:1"},  # a module, not its package
        "pkg.sub.other": {"pkg": "pkg/sub/other.py:3"},
    }
    assert "pkg.ext" in graph.modules
    # pkg -> pkg.sub -> pkg.sub.other -> pkg, and pkg.sub -> pkg.sub.mod -> pkg.sub.other
    assert [sorted(c) for c in strongly_connected(graph)] == [["pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub.other"]]


def test_from_package_import_attribute_is_an_edge_to_the_package(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "from pkg.a import VALUE\n",
        "a.py": "VALUE = 1\n",
        "b.py": "from pkg import VALUE, a\n",
    })
    assert import_graph(pkg).edges["pkg.b"] == {"pkg": "pkg/b.py:1", "pkg.a": "pkg/b.py:1"}


@pytest.mark.parametrize(("line", "found"), [
    ("def f():\n    import xmfast_cli.app", "pkg/a.py:3: imports xmfast_cli.app"),
    ("from xmfast_cli import render", "pkg/a.py:2: imports xmfast_cli"),
    ("if TYPE_CHECKING:\n    from xmfast_cli.app import app", "pkg/a.py:3: imports xmfast_cli.app"),
])
def test_an_import_of_the_cli_is_found(tmp_path: Path, line: str, found: str) -> None:
    pkg = _package(tmp_path, {"__init__.py": "", "a.py": f"from typing import TYPE_CHECKING\n{line}\n"})
    assert import_graph(pkg).forbidden == [found]

"""Architecture checks computed from the source with ``ast`` (nothing is imported):

1. the import graph of ``fsrec_serve``, ``exporters`` and ``loadtests`` has no cycle;
2. no import points against the layer order of the data flow (``LAYERS``, as in the team plan:
   an import may only point to the same layer or to the LEFT);
3. the thin client imports only the contract, the errors and the settings (plus itself);
4. no ``.py`` file outside ``tests/`` is longer than ``MAX_LINES``;
5. the layer order written in ``docs/INTERFACES.md`` is ``LAYERS``, name for name.

Edges are module-level AND function-local imports, absolute and relative, plus
``importlib.import_module("literal")`` calls and the implicit import of a foreign package's
``__init__`` (``import a.b.c`` runs ``a/__init__`` and ``a/b/__init__``). ``bench/`` and
``tests/`` are excluded. ``PENDING_*`` list known offenders that other work in flight removes;
each has its reason, and the lists only shrink.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fsrec_serve", "exporters", "loadtests", "model_repository")
MAX_LINES = 450

# The data flow, left to right. A module belongs to the layer of its longest listed prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("fsrec_serve", "fsrec_serve.contract", "fsrec_serve.errors", "fsrec_serve.settings", "fsrec_serve.idmap")),
    ("data", ("fsrec_serve.data",)),
    ("store", ("fsrec_serve.store",)),  # per-user state + event log (SQLite / redis): base and data only
    ("model", ("fsrec_serve.model",)),
    ("evaluation", ("fsrec_serve.evaluation",)),  # metrics, next-item/rating evaluators, baselines, report (model-level: no training)
    ("training", ("fsrec_serve.training",)),  # the loop takes evaluate_fn; pretrain() passes the evaluator
    ("adaptation", ("fsrec_serve.adaptation",)),
    ("experiments", ("fsrec_serve.experiments",)),  # few-shot/cold-start, arrivals, metarec protocols
    ("exporters", ("exporters",)),
    ("model_repository", ("model_repository",)),  # templates (their model.py runs inside the stub)
    ("serving", ("fsrec_serve.serving",)),  # the launcher
    ("client", ("fsrec_serve.client",)),
    ("operations", ("fsrec_serve.operations",)),  # rollout, model control, load-test runner
    ("learner", ("fsrec_serve.learner",)),  # the online learner: store + adaptation + export + rollout
    ("loadtests", ("loadtests",)),
    ("top", ("fsrec_serve.commands", "fsrec_serve.cli", "fsrec_serve.pipeline")),
]
CLIENT_MAY_IMPORT = ("fsrec_serve.contract", "fsrec_serve.errors", "fsrec_serve.settings", "fsrec_serve.idmap",
                     "fsrec_serve.client")

# (importer, imported) -> why it is still there. Only known offenders of work in flight.
PENDING_EDGES: dict[tuple[str, str], str] = {}
# modules of a known cycle being removed (as reported by test_no_import_cycles) -> why
PENDING_CYCLES: dict[frozenset[str], str] = {}
# path relative to the repository -> why it is still longer than MAX_LINES
PENDING_LONG_FILES: dict[str, str] = {}


# -- the graph ------------------------------------------------------------------------------------
def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None = third party)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from pkg import sub` imports the sub-module when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            target = _known(name, modules)
            if target is None or target == module:
                continue
            found.add(target)
            # the implicit import of foreign parent packages (their __init__ runs first)
            parts = target.split(".")
            for n in range(1, len(parts)):
                parent = ".".join(parts[:n])
                if parent in modules and not (module == parent or module.startswith(parent + ".")):
                    found.add(parent)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> int:
    best, where = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, where = len(p), i
    if where is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS in {__file__}")
    return where


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle path."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(_cycle_path(sorted(comp), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_path(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module (breadth-first back to it)."""
    members, start = set(comp), comp[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


# -- the checks -----------------------------------------------------------------------------------
def test_no_import_cycles(graph):
    cycles = [c for c in _cycles(graph) if frozenset(c) not in PENDING_CYCLES]
    assert not cycles, "import cycles (break them; a function-local import still counts):\n" + "\n".join(
        "  " + " -> ".join(c) for c in cycles)


def test_imports_follow_the_layer_order(graph):
    names = [n for n, _ in LAYERS]
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            if _layer(dst) > _layer(src) and not any(src.startswith(a) and (dst == b or dst.startswith(b + "."))
                                                     for a, b in PENDING_EDGES):
                bad.append(f"  {src} ({names[_layer(src)]}) -> {dst} ({names[_layer(dst)]})")
    assert not bad, f"imports against the flow {' -> '.join(names)}:\n" + "\n".join(bad)


def test_client_imports_only_the_contract_errors_and_settings(graph):
    bad = [f"  {src} -> {dst}" for src, targets in sorted(graph.items()) if src.startswith("fsrec_serve.client")
           for dst in sorted(targets) if not any(dst == a or dst.startswith(a + ".") for a in CLIENT_MAY_IMPORT)]
    assert not bad, "the thin client imports more than contract/errors/settings:\n" + "\n".join(bad)


def test_no_source_file_is_too_long():
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("tests/", ".venv/", ".git/", "build/")) or "/site-packages/" in rel:
            continue
        n = len(path.read_text(errors="replace").splitlines())
        if n > MAX_LINES and rel not in PENDING_LONG_FILES:
            long.append(f"  {rel}: {n} lines")
    assert not long, f"files over {MAX_LINES} lines (split them):\n" + "\n".join(long)


def test_pending_lists_hold_only_live_offenders(graph):
    """An allow-list entry whose offence is gone must be deleted (the lists only shrink)."""
    stale = [f"edge {a} -> {b}" for a, b in PENDING_EDGES
             if not any(s.startswith(a) and any(t == b or t.startswith(b + ".") for t in ts) for s, ts in graph.items())]
    stale += [f"long file {p}" for p in PENDING_LONG_FILES
              if not (ROOT / p).is_file() or len((ROOT / p).read_text().splitlines()) <= MAX_LINES]
    live = {frozenset(c) for c in _cycles(graph)}
    stale += [f"cycle {sorted(c)}" for c in PENDING_CYCLES if c not in live]
    assert not stale, "remove these entries from the PENDING lists:\n  " + "\n  ".join(stale)


def _documented_layers(text: str) -> list[str]:
    """The layer names of the first ```text block after "Data flow" in INTERFACES.md:
    ``a (what) -> b -> ...``, parentheses dropped."""
    start = text.find("Data flow")
    m = re.search(r"```text\n(.*?)```", text[start:], re.S) if start >= 0 else None
    if m is None:
        raise AssertionError("docs/INTERFACES.md has no 'Data flow' paragraph with a ```text block of the layers")
    return [part.strip() for part in re.sub(r"\([^)]*\)", "", m.group(1)).split("->")]


def test_interfaces_doc_lists_the_layers_in_order():
    documented = _documented_layers((ROOT / "docs" / "INTERFACES.md").read_text())
    names = [n for n, _ in LAYERS]
    assert documented == names, (
        f"docs/INTERFACES.md lists the layers as\n  {' -> '.join(documented)}\nbut LAYERS in {__file__} is\n  "
        f"{' -> '.join(names)}\nmake the doc's ```text block under 'Data flow' match LAYERS")


def test_the_doc_parser_reads_names_and_refuses_a_missing_block():
    doc = "Data flow, left:\n\n```text\nbase (contract, errors) -> data\n  -> top (cli)\n```\n"
    assert _documented_layers(doc) == ["base", "data", "top"]
    with pytest.raises(AssertionError, match="no 'Data flow'"):
        _documented_layers("Data flow: base -> data\n")


# -- the checker itself on a tiny tree ------------------------------------------------------------
def test_the_graph_sees_local_relative_and_hidden_imports(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import c\n    return c\n")
    (pkg / "b.py").write_text("import importlib\nimport os\nimportlib.import_module('p.a')\n")
    (pkg / "sub" / "c.py").write_text("from ..b import x\n")
    modules = {"p": pkg / "__init__.py", "p.a": pkg / "a.py", "p.b": pkg / "b.py", "p.sub": pkg / "sub" / "__init__.py",
               "p.sub.c": pkg / "sub" / "c.py"}
    g = {m: _imports(m, path, modules) for m, path in modules.items()}
    assert g["p.a"] == {"p.sub.c", "p.sub"}  # function-local, relative, and the package __init__ it runs
    assert g["p.b"] == {"p.a"} and g["p.sub.c"] == {"p.b"} and g["p.sub"] == {"p.sub.c"}
    assert _cycles(g) == [["p.a", "p.sub.c", "p.b", "p.a"]]  # the shortest way round, reported as a path

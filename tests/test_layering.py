"""The shape of the codebase: import layers, views that only present, no import cycles.

Reads every module under ``app/`` and ``precompute/`` with :mod:`ast` (nothing is imported, so
no side effects) and checks the rules of ``CONTRIBUTING.md``:

* **Layers** (left to right)::

      base: app, app.config, app.images, app.lru (settings, image decoding, an LRU; no project imports)
      app.models → app.neurons → app.db → precompute.* | app.live → app.web → app.cli

  A module imports only from its own layer or layers to its left. ``precompute`` and
  ``app.live`` are one layer (both compute with the model and write through ``app.db``).
  ``app.config`` / ``app.images`` form the base layer: everyone may import them, they import
  nothing of ours. ``app.cli`` (the console script) is the outermost layer.
* **Views only present**: a module ``app/web/views/<name>.py`` never imports another view, never
  imports SQLAlchemy, and never opens a session or runs SQL (calls to ``sessions``,
  ``write_sessions``, ``execute``, ``scalar``, ``scalars``, ``select``, ``text``).
* **One route helper**: a view registers a page and its ``.json`` twin with
  :func:`app.web.routing.page`, never a ``.json`` route of its own (``@router.get("/x.json")``).
* **DAG**: the module import graph has no cycle (a cycle is a strongly connected component of
  more than one module).

Every import counts, also ones inside functions or under ``TYPE_CHECKING``: a lazy import hides a
dependency, it does not remove it.

Other work in progress still breaks some rules; each remaining violation is listed in an
allowlist below, by module. A new violation fails, and so does an allowlisted one that no longer
exists: the lists only shrink. Fix a violation, then delete its line.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "precompute")

BASE = frozenset({"app", "app.config", "app.images", "app.lru", "precompute"})
"""The base layer: importable from anywhere. ``app``/``precompute`` are the (empty) packages."""

LAYERS: tuple[tuple[str, ...], ...] = (
    ("app.models",),
    ("app.neurons",),
    ("app.db",),
    ("precompute", "app.live"),
    ("app.web",),
    ("app.cli",),
)
"""Layer prefixes, left (lowest) to right (highest)."""

VIEWS = "app.web.views"
SQL_CALLS = frozenset({
    "sessions", "write_sessions", "execute", "scalar", "scalars", "select", "text",
    "expire_all", "commit", "flush", "rollback", "refresh", "merge",
})  # fmt: skip
"""Names of session/SQL calls a view never makes, on whatever object. ``get`` and ``add`` are
left out: views call them on dicts, headers, forms and sets; ``delete`` is a route method."""
ROUTE_METHODS = frozenset({"get", "post", "put", "patch", "delete", "head", "api_route", "add_api_route"})

# ------------------------------------------------------------------------------- allowlists
# Each entry is a violation that still exists while issue 13's web half (views → app.live /
# app.db) is in progress. Remove the line when the violation goes.

CYCLE_ALLOWLIST: frozenset[frozenset[str]] = frozenset()
"""The modules of each import cycle that still exists (none now)."""

LAYER_ALLOWLIST: frozenset[tuple[str, str]] = frozenset({
    # (module, the layer prefix it may not import from)
})  # fmt: skip

VIEW_IMPORT_ALLOWLIST: frozenset[tuple[str, str]] = frozenset()
"""(view, the other view it imports) for each view that still imports a view (none now)."""

VIEW_SQL_ALLOWLIST: frozenset[tuple[str, str]] = frozenset({
    # (view, "sqlalchemy" for an import of it, or the session/SQL call it makes)
})  # fmt: skip

JSON_ROUTE_ALLOWLIST: frozenset[tuple[str, str]] = frozenset({
    # (view, "METHOD path") of a ``.json`` route registered by hand instead of routing.page
    ("app.web.views.analyze", "POST /analyze.json"),  # the API twin of a form post (303 vs JSON)
})  # fmt: skip


# ---------------------------------------------------------------------------------- the graph


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join(parts)] = (path, is_package)
    return found


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name][0].read_text(), filename=str(modules()[name][0]))


def imported_names(name: str) -> set[str]:
    """Every module name ``name`` imports (absolute; ``from p import m`` also yields ``p.m``)."""
    _, is_package = modules()[name]
    out: set[str] = set()
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module → the project modules it imports (itself excluded)."""
    known = modules()
    return {
        name: frozenset(t for t in imported_names(name) if t in known and t != name) for name in known
    }


def layer_of(name: str) -> int:
    """Index of ``name``'s layer: -1 for the base layer, then 0.. for ``LAYERS``."""
    if name in BASE:
        return -1
    for index, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{name} is in no layer: add it to LAYERS/BASE in this test and CONTRIBUTING.md")


def layer_prefix(name: str) -> str:
    index = layer_of(name)
    if index < 0:
        return name
    return next(p for p in LAYERS[index] if name == p or name.startswith(p + "."))


def layer_violations() -> set[tuple[str, str]]:
    """(module, layer prefix of a module it imports from a layer to its right)."""
    return {
        (name, layer_prefix(target))
        for name, targets in graph().items()
        for target in targets
        if layer_of(target) > layer_of(name)
    }


def is_view(name: str) -> bool:
    return name.startswith(VIEWS + ".") and name.count(".") == VIEWS.count(".") + 1


def view_import_violations() -> set[tuple[str, str]]:
    return {(name, t) for name, targets in graph().items() if is_view(name) for t in targets if is_view(t)}


def view_sql_violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for name in modules():
        if not is_view(name):
            continue
        if any(t == "sqlalchemy" or t.startswith("sqlalchemy.") for t in imported_names(name)):
            found.add((name, "sqlalchemy"))
        for node in ast.walk(tree(name)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in SQL_CALLS:
                found.add((name, called))
    return found


def hand_json_routes(module: ast.Module) -> set[str]:
    """``"METHOD path"`` of each ``router.<method>("….json")`` / ``add_api_route("….json")`` call."""
    found: set[str] = set()
    for node in ast.walk(module):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ROUTE_METHODS or not node.args:
            continue
        path = node.args[0]
        if isinstance(path, ast.Constant) and isinstance(path.value, str) and path.value.endswith(".json"):
            method = "ANY" if node.func.attr.endswith("api_route") else node.func.attr.upper()
            found.add(f"{method} {path.value}")
    return found


def json_route_violations() -> set[tuple[str, str]]:
    return {(name, route) for name in modules() if is_view(name) for route in hand_json_routes(tree(name))}


def cycles(edges: dict[str, frozenset[str]] | None = None) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan) of ``edges`` (the graph)."""
    edges = graph() if edges is None else edges
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _check(kind: str, found: set[tuple[str, str]], allowed: frozenset[tuple[str, str]]) -> None:
    new = sorted(found - allowed)
    gone = sorted(allowed - found)
    assert not new, f"new {kind} violations (see CONTRIBUTING.md): {new}"
    assert not gone, f"{kind} allowlist entries that no longer occur (delete them from this test): {gone}"


# ---------------------------------------------------------------------------------- the tests


def test_the_module_graph_is_found() -> None:
    edges = graph()
    assert {"app.models", "app.neurons.capture", "app.db.schema", "app.web.app", "app.cli"} <= set(edges)
    assert "app.models" in edges["app.neurons.capture"]  # relative and absolute imports are parsed
    assert all(layer_of(name) >= -1 for name in edges)  # every module is in a layer


def test_modules_import_only_from_their_layer_or_layers_to_the_left() -> None:
    _check("layer", layer_violations(), LAYER_ALLOWLIST)


def test_views_never_import_another_view() -> None:
    _check("view-imports-view", view_import_violations(), VIEW_IMPORT_ALLOWLIST)


def test_views_never_touch_sqlalchemy_sessions_or_sql() -> None:
    _check("view-runs-sql", view_sql_violations(), VIEW_SQL_ALLOWLIST)


def test_views_register_json_twins_through_the_route_helper() -> None:
    _check("hand-made-json-route", json_route_violations(), JSON_ROUTE_ALLOWLIST)


def test_the_demo_commands_share_their_helpers_without_importing_each_other() -> None:
    """``train-demo`` and ``eval-demo`` both measure with ``precompute.demo_eval`` (issue 13)."""
    edges = graph()
    train, evaluate = edges["precompute.train_demo"], edges["precompute.eval_demo"]
    assert "precompute.demo_eval" in train and "precompute.demo_eval" in evaluate
    assert "precompute.eval_demo" not in train and "precompute.train_demo" not in evaluate


def precompute_stages() -> dict[str, str]:
    """``stage → module`` of every ``precompute <stage>`` command in ``COMMANDS`` (``app/cli.py``,
    read with :mod:`ast`)."""
    stages: dict[str, str] = {}
    for node in ast.walk(tree("app.cli")):
        if not (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "COMMANDS"):
            continue
        for entry in ast.literal_eval(node.value):
            words, target, _ = entry
            if len(words) == 2 and words[0] == "precompute":
                stages[words[1]] = target.split(":")[0]
    return stages


def test_every_precompute_stage_follows_the_stage_protocol() -> None:
    """Each ``precompute <stage>`` command's module defines ``run_<stage>`` (taking ``db_url``) and
    keeps its ``runs`` row through ``precompute.runs`` (CONTRIBUTING.md, "A precompute stage")."""
    stages = precompute_stages()
    assert {"activations", "summaries", "featurevis", "words", "labels"} <= set(stages)
    for stage, module in stages.items():
        functions = {
            node.name: node for node in tree(module).body if isinstance(node, ast.FunctionDef)
        }
        entry = functions.get(f"run_{stage}")
        assert entry is not None, f"{module} has no entry point run_{stage}"
        assert "db_url" in [a.arg for a in entry.args.args], f"{module}.run_{stage} takes no db_url"
        assert "precompute.runs" in imported_names(module), f"{module} does not use precompute.runs"
        assert {"add_arguments", "run"} <= set(functions), f"{module} lacks add_arguments/run"
        old_names = {
            target.id
            for node in tree(module).body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
            and node.value.id == f"run_{stage}"
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert not old_names, f"{module} keeps other names for run_{stage}: {sorted(old_names)}"


def test_the_import_graph_has_no_cycle() -> None:
    found = {frozenset(component) for component in cycles()}
    new, gone = found - CYCLE_ALLOWLIST, CYCLE_ALLOWLIST - found
    assert not new, f"import cycles (move the shared code into a module both can import): {new}"
    assert not gone, f"cycle allowlist entries that no longer occur (delete them from this test): {gone}"


def test_the_checks_catch_what_they_should() -> None:
    """The rules are not vacuous: a synthetic right-to-left import, SQL in a view, and a cycle."""
    snippet = ast.parse("from sqlalchemy import select\nrows = session.execute(select(X))\n")
    calls = {
        n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
        for n in ast.walk(snippet)
        if isinstance(n, ast.Call)
    }
    assert {"execute", "select"} <= calls & SQL_CALLS
    assert layer_of("app.models.demo") < layer_of("app.neurons.capture") < layer_of("app.db.queries")
    assert layer_of("precompute.labels") == layer_of("app.live.runner") < layer_of("app.web.app")
    assert layer_of("app.config") < layer_of("app.models")
    loop = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"}), "d": frozenset({"a"})}
    assert cycles(loop) == [["a", "b", "c"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []
    routes = ast.parse(
        '@router.get("/x.json")\ndef a(): ...\n@router.post("/x")\ndef b(): ...\n'
        '@page(router, "/y")\ndef c(fmt): ...\nrouter.add_api_route("/z.json", c)\n'
    )
    assert hand_json_routes(routes) == {"GET /x.json", "ANY /z.json"}

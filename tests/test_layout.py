"""The layout of the project, checked from the code (``ast``, nothing imported): the packages
depend on each other in one direction only -- data and mrcnn_config on nothing else of the
project, models on those two, attacks on nothing (but tfcompat), defense on all of those,
evaluation on all of them, main.py only on evaluation --, so do the rooms inside evaluation
(its sub-packages options, store and report, and the modules at its top: EVALUATION_LAYERS),
and no modules import each other in a circle (function-level imports included)."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Package -> the other top-level packages it may import (tfcompat, TensorFlow's set-up, is
#: allowed everywhere; nothing may import main, bench or tests).
ALLOWED = {
    "data": set(),
    "mrcnn_config": set(),
    "models": {"data", "mrcnn_config"},
    "attacks": {"data"},          # the one image rule (data.images.check_images)
    "defense": {"attacks", "data", "models", "mrcnn_config"},
    "evaluation": {"attacks", "data", "defense", "models", "mrcnn_config"},
}
EVERYWHERE = {"tfcompat"}
#: evaluation's rooms and their layers (0 the lowest): a module of evaluation imports only from
#: its own room or from a room of a lower layer.  A room is a sub-package (options, store,
#: report) or a module at evaluation's top; the modules that run a command -- the harness,
#: :data:`HARNESS` -- are one room, whose modules import each other in one direction only
#: (test_no_import_cycles).
EVALUATION_LAYERS = {
    # the command line's options; the metrics
    "evaluation.options": 0, "evaluation.metrics": 0,
    # what is built on the metrics: metrics.json's schema, the intervals and paired tests
    "evaluation.schema": 1, "evaluation.stats": 1,
    # the saved records and their stores; a run's configuration
    "evaluation.store": 2, "evaluation.config": 2,
    # the work units of the grid and of Ray; everything that renders (pages, tables, figures)
    "evaluation.units": 3, "evaluation.report": 3,
    # the harness
    "harness": 4,
}
HARNESS = {"evaluation", "evaluation.commands", "evaluation.comparison", "evaluation.executors",
           "evaluation.grid", "evaluation.model_k", "evaluation.results", "evaluation.run"}


def _modules():
    """Module name -> file of every module of the project's packages, main.py and
    tfcompat.py."""
    mods = {"main": os.path.join(ROOT, "main.py"), "tfcompat": os.path.join(ROOT, "tfcompat.py")}
    for package in sorted(ALLOWED):
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    mod = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    mods[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = path
    return mods


def _imports(path):
    """Every module name ``path`` imports (``from a import b``: ``a`` and ``a.b``)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(node.module + "." + a.name for a in node.names)
    return out


def _graph():
    mods = _modules()
    return {name: {d for d in _imports(path) if d in mods and d != name
                   and not name.startswith(d + ".")}
            for name, path in mods.items()}


def test_packages_import_only_downwards():
    wrong = []
    for name, deps in _graph().items():
        top = name.split(".")[0]
        if top not in ALLOWED:
            continue
        for dep in deps:
            other = dep.split(".")[0]
            if other != top and other not in ALLOWED[top] | EVERYWHERE:
                wrong.append("%s imports %s" % (name, dep))
    assert not wrong, wrong


def _room(module):
    """The room of a module of evaluation: its sub-package or its module at evaluation's top,
    ``harness`` for the modules of :data:`HARNESS`."""
    room = ".".join(module.split(".")[:2])
    return "harness" if room in HARNESS else room


def _wrong_way(graph, layers):
    """The imports of ``graph`` between modules of evaluation that leave the importer's room for
    a room that is not on a lower layer of ``layers`` (room -> layer), or whose rooms have no
    layer."""
    wrong = []
    for name in sorted(graph):
        if name.split(".")[0] != "evaluation":
            continue
        for dep in sorted(graph[name]):
            here, there = _room(name), _room(dep)
            if dep.split(".")[0] != "evaluation" or here == there:
                continue
            if here not in layers or there not in layers or layers[there] >= layers[here]:
                wrong.append("%s imports %s (%s, layer %s -> %s, layer %s)" % (
                    name, dep, here, layers.get(here), there, layers.get(there)))
    return wrong


def test_every_module_of_evaluation_has_a_room():
    rooms = {_room(m) for m in _modules() if m.split(".")[0] == "evaluation"}
    assert rooms == set(EVALUATION_LAYERS), sorted(rooms ^ set(EVALUATION_LAYERS))


def test_evaluation_imports_within_a_room_or_downwards():
    wrong = _wrong_way(_graph(), EVALUATION_LAYERS)
    assert not wrong, wrong


def test_the_room_check_sees_the_imports_it_forbids():
    """Planted on a small graph: an import up and one sideways (another room of the same
    layer) are found, as is a room without a layer; imports inside a room, downwards, between
    the harness's modules or out of evaluation are not."""
    graph = {
        "evaluation.store.records": {"evaluation.report.page"},
        "evaluation.config": {"evaluation.store.records", "evaluation.options.base"},
        "evaluation.report.page": {"evaluation.report.tables", "evaluation.store.records",
                                   "evaluation.schema"},
        "evaluation.run": {"evaluation.grid", "evaluation.report.writer", "defense.base"},
        "evaluation.schema": {"evaluation.metrics"},
        "evaluation.units": {"evaluation.elsewhere"},
    }
    assert [w.split(" (")[0] for w in _wrong_way(graph, EVALUATION_LAYERS)] == [
        "evaluation.config imports evaluation.store.records",
        "evaluation.store.records imports evaluation.report.page",
        "evaluation.units imports evaluation.elsewhere"]
    real = _graph()        # and the real graph holds imports between rooms
    assert "evaluation.store.records" in real["evaluation.report.gallery"]
    assert "evaluation.options.base" in real["evaluation.options.m"]


def test_no_module_is_imported_by_the_library():
    """main is the entry point: no package imports it (nor bench's scripts, nor the tests)."""
    for name, path in _modules().items():
        for dep in _imports(path):
            assert dep.split(".")[0] not in ("main", "bench", "tests", "toys"), (name, dep)


def test_main_only_parses_and_calls():
    """main.py turns the command line into options and hands them to one function: it
    imports evaluation's options and commands (and tfcompat) and defines main() alone."""
    path = os.path.join(ROOT, "main.py")
    assert {d.split(".")[0] for d in _imports(path)} - {"sys", "__future__"} <= {
        "tfcompat", "evaluation"}
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == ["main"]


def test_no_import_cycles():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append(" -> ".join(stack[stack.index(v):] + [v]))
            elif not state.get(v):
                visit(v)
        state[u] = 2
        stack.pop()

    for u in sorted(graph):
        if not state.get(u):
            visit(u)
    assert not cycles, cycles


def test_the_checks_see_the_imports_they_forbid(tmp_path):
    """The checks parse what they claim to: a function-level import counts, a relative
    one is not the project's."""
    path = tmp_path / "m.py"
    path.write_text("import os\nfrom a.b import c\n\ndef f():\n    import d.e\n"
                    "    from . import g\n")
    assert _imports(str(path)) == {"os", "a.b", "a.b.c", "d.e"}
    graph = _graph()
    assert "evaluation.report.writer" in graph["evaluation.run"]
    assert "evaluation.run" not in graph["evaluation.report.writer"]

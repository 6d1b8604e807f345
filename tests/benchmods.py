"""The scripts under ``bench/`` loaded as modules for their tests (they are scripts, not a
package: each is loaded from its file, with ``bench/`` on the path for their shared
``_machine``)."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def load(name: str):
    """The module of ``bench/NAME.py``."""
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Shared pytest set-up: TensorFlow is configured by tfcompat before any test imports it, and
the fixtures several test modules share are defined here, once -- each built once per module
that uses it (a module sizes a fixture with the constant its docstring names).  The tasks,
data sets and models themselves are made by tests/toys.py (imported when first needed, so a
module that uses none of them loads no TensorFlow for them)."""
import os

import pytest

import tfcompat  # noqa: F401  (must come first: sets TF_USE_LEGACY_KERAS)

#: The modules that take longest (measured: a full run's --durations on the 2-core machine),
#: longest first.  pytest.ini hands whole modules to the two processes in collection order
#: (--dist loadfile --no-loadscope-reorder), so starting with these keeps one process from
#: ending the run alone on a 4-minute module (the tail was ~5 of the suite's ~14.5 minutes).
HEAVY_FIRST = (
    "evaluation/test_golden.py",
    "evaluation/test_adaptive_comparison.py",
    "evaluation/test_pipeline.py",
    "evaluation/test_grid.py",
    "models/test_paper_configs.py",
    "models/test_mrcnn_train.py",
    "models/test_k_adversarial.py",
    "evaluation/test_resume_exact.py",
    "evaluation/test_hostile_inputs.py",
    "models/test_distribute.py",
)


def pytest_collection_modifyitems(config, items):
    """The modules of :data:`HEAVY_FIRST` first, in its order; the others as collected."""
    here = os.path.dirname(os.path.abspath(__file__))
    missing = [m for m in HEAVY_FIRST if not os.path.isfile(os.path.join(here, m))]
    if missing:     # a moved module would silently lose its place
        raise pytest.UsageError("tests/conftest.py HEAVY_FIRST names missing modules: %s"
                                % ", ".join(missing))

    def rank(item):
        rel = os.path.relpath(str(item.path), here).replace(os.sep, "/")
        return HEAVY_FIRST.index(rel) if rel in HEAVY_FIRST else len(HEAVY_FIRST)
    items.sort(key=rank)          # stable: the order inside a module is kept


@pytest.fixture(scope="module")
def toy():
    """``(model, test images [32, 16, 16, 3], test labels [32])``: the 3-class colour toy and
    a tiny conv net trained on it (toys.channel_task)."""
    from toys import channel_task
    return channel_task()


@pytest.fixture(scope="module")
def pattern_toy(request):
    """``(model, training images [768], test images [N], test labels [N])`` of the 10-class
    pattern task (toys.pattern_task); N is the module's ``PATTERN_TEST_IMAGES`` (32)."""
    from toys import pattern_task
    return pattern_task(getattr(request.module, "PATTERN_TEST_IMAGES", 32))


@pytest.fixture(scope="module")
def tiny_data(request, tmp_path_factory):
    """The folder of a tiny synthetic UnMask data set (toys.tiny_unmask with the module's
    ``TINY_DATA`` keyword arguments: seed, images per class)."""
    from toys import tiny_unmask
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    return tiny_unmask(str(root / "unmask"), **getattr(request.module, "TINY_DATA", {}))


@pytest.fixture(scope="module")
def tiny_k(tmp_path_factory):
    """K in its tiny configuration, in inference mode (closed after the module)."""
    from models.mrcnn.model import MaskRCNN
    from mrcnn_config import get_config

    model = MaskRCNN("inference", get_config("tiny"), str(tmp_path_factory.mktemp("k_logs")))
    yield model
    model.close()


@pytest.fixture(scope="module")
def random_k(tmp_path_factory):
    """A checkpoint of K in the synthetic configuration with seeded random weights: the real
    graph and session, no training (toys.random_k_checkpoint)."""
    from toys import random_k_checkpoint
    return random_k_checkpoint(str(tmp_path_factory.mktemp("random_k") / "k.h5"))

"""The order a long adaptive run attacks its image batches in: the classes take turns (test
sets are stored class by class), and the record is still put together in image order."""
import dataclasses

import numpy as np
import pytest

from data.knowledge import get_class_set
from evaluation.store.layout import batch_order


def test_class_sorted_batches_take_turns():
    """CS5b's 300 test images, 60 per class, in batches of 20: the first batch of every class,
    then the second of every class, then the third."""
    labels = np.repeat(np.arange(5), 60)
    assert batch_order(labels, 20) == [0, 3, 6, 9, 12, 1, 4, 7, 10, 13, 2, 5, 8, 11, 14]


def test_a_batch_counts_as_its_majority_class_ties_to_the_lower():
    # classes of 50, 30, 20 images: batch 2 holds 10 of class 0 and 10 of class 1 (a tie:
    # class 0), batch 3 is class 1's, batch 4 class 2's
    labels = np.repeat(np.arange(3), [50, 30, 20])
    assert batch_order(labels, 20) == [0, 3, 4, 1, 2]
    # a short last batch, classes not sorted: the order is still a permutation
    rng = np.random.default_rng(0)
    shuffled = rng.integers(0, 4, 37)
    order = batch_order(shuffled, 5)
    assert sorted(order) == list(range(8))


def test_one_class_or_one_batch_keeps_index_order():
    assert batch_order(np.zeros(45, np.int64), 10) == [0, 1, 2, 3, 4]
    assert batch_order(np.arange(7), 20) == [0]
    assert batch_order(np.zeros(0, np.int64), 4) == []
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        batch_order(np.arange(3), 0)


def test_the_record_is_merged_in_image_order_whatever_order_its_batches_ran(tmp_path,
                                                                            monkeypatch):
    """AdaptiveStore attacks the batches in batch_order and puts the record together in image
    order: row i of every array is test image i's."""
    from attacks.engine import EngineResult
    from defense.base import ImageSet
    from defense.threats import Goal, Threat
    from evaluation.config import EvalConfig
    from evaluation.store import adaptive_store

    n, size = 10, 2
    labels = np.repeat(np.arange(3), [4, 4, 2])          # batches 0-1 class 0, 2-3 class 1
    x = np.tile((np.arange(n, dtype=np.float32) / n)[:, None, None, None], (1, 4, 4, 3))
    test = ImageSet(name="benign-test", split="test", x=x,
                    keys=["test-%d" % i for i in range(n)], labels=labels, fingerprint={})
    cfg = dataclasses.replace(EvalConfig(class_set=get_class_set("CS3a")),
                              adaptive_batch=size, adaptive_steps=4, adaptive_restarts=1)
    store = adaptive_store.AdaptiveStore(cfg, None, {}, lambda split: test, str(tmp_path),
                                         lambda s: None)
    ran = []

    def attacked(defense, name, eps, threat, goal, batch, fp=None):
        ran.append(batch)
        rows = np.arange(batch * size, min(batch * size + size, n))
        return EngineResult(x_adv=x[rows], success=rows % 3 == 0,
                            first_step=np.where(rows % 3 == 0, 1, -1)[:, None],
                            route_evaluations=(rows + 1)[:, None].astype(np.int64),
                            won=np.where(rows % 3 == 0, 0, -1), routes=("default",),
                            runs=[{"route": "default", "restart": 0, "stage": 0,
                                   "attack": "pgd_linf", "target_rank": batch,
                                   "images": len(rows), "reached": int(np.sum(rows % 3 == 0))}],
                            seconds=1.0)

    monkeypatch.setattr(store, "adaptive_batch", attacked)
    monkeypatch.setattr(adaptive_store, "model_predictions",
                        lambda m, images: np.round(images[:, 0, 0, 0] * n).astype(np.int64))
    defense = type("Named", (), {"label": "some-defense"})()
    rec = store._run_adaptive(defense, "pgd_linf", 8.0, Threat.ADAPTIVE, Goal.WRONG, test, {},
                              str(tmp_path / "record.npz"))
    assert ran == [0, 2, 4, 1, 3] == batch_order(labels, size)
    np.testing.assert_array_equal(rec["x_adv"], x)
    np.testing.assert_array_equal(rec["pred_adv"], np.arange(n))
    np.testing.assert_array_equal(rec["route_evaluations"][:, 0], np.arange(1, n + 1))
    np.testing.assert_array_equal(rec["success"], np.arange(n) % 3 == 0)
    # what ran, summed per plan entry, in the order of the images (not of the batches' runs)
    import json
    runs = json.loads(str(rec["cost"]))["runs"]
    assert [r["target_rank"] for r in runs] == list(range(n // size))

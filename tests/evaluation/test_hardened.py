"""Hardened UnMask in the evaluation (issue 18): which robust K ``unmask:k=robust`` loads, and
the refusals before any work -- a standard K given where the robust one is asked for, none
trained yet."""
import json
import os

import pytest

from data.knowledge import get_class_set
from evaluation.config import EvalConfig
from evaluation.model_k import robust_config
from evaluation.model_k import find_robust_k
from models.mrcnn.adversarial import KAdversarialSettings
from mrcnn_config import get_config


def _run_folder(root, cfg, stamp="20260101T0000"):
    """A K run folder as training leaves it: config.json and one (empty) checkpoint."""
    folder = os.path.join(str(root), "%s%s" % (cfg.NAME.lower(), stamp))
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f)
    path = os.path.join(folder, "mask_rcnn_%s_0001.h5" % cfg.NAME.lower())
    open(path, "wb").close()
    return path


def robust_k_checkpoint(cfg):
    """The robust K a run of ``cfg`` loads for unmask:k=robust."""
    return find_robust_k(cfg.k_robust, cfg.k_robust_log_dir, cfg.k_config)


def _cfg(**kwargs):
    return EvalConfig(class_set=get_class_set("CS5b"), defenses=("unmask:k=robust",),
                      k_config="synthetic", **kwargs)


def test_the_robust_k_is_found_in_its_folder_and_a_standard_one_is_refused(tmp_path):
    standard_cfg = get_config("synthetic")
    robust_cfg = robust_config(standard_cfg, KAdversarialSettings(eps=8, steps=3))
    robust_dir, standard_dir = tmp_path / "robust", tmp_path / "standard"
    robust = _run_folder(robust_dir, robust_cfg)
    standard = _run_folder(standard_dir, standard_cfg)
    assert robust_k_checkpoint(_cfg(k_robust_log_dir=str(robust_dir))) == robust
    assert robust_k_checkpoint(_cfg(k_robust=robust)) == robust
    with pytest.raises(ValueError, match="is a standard K .* a robust K is asked for"):
        robust_k_checkpoint(_cfg(k_robust=standard))
    # the standard K's folder holds no robust K: how to train one
    with pytest.raises(FileNotFoundError, match="python main.py --model K --adv-train"):
        robust_k_checkpoint(_cfg(k_robust_log_dir=str(standard_dir)))


def test_k_robust_option_is_checked_before_any_work(tmp_path):
    from evaluation.options import parse_args
    missing = str(tmp_path / "nope.h5")
    options = parse_args(["--model", "M", "--defenses", "unmask:k=robust", "--k-robust",
                          missing])
    with pytest.raises(ValueError, match="--k-robust .*nope.h5: no such checkpoint file"):
        EvalConfig.from_options(options)


def test_grid_workers_get_the_robust_k_folders_as_absolute_paths(tmp_path, monkeypatch):
    """A grid unit may run in another working directory (a Ray worker): the robust K's
    folder, checkpoint and surrogate are named from anywhere; "last" stays a search."""
    from evaluation.executors import absolute_paths
    monkeypatch.chdir(tmp_path)
    cfg = absolute_paths(_cfg(k_robust_log_dir="rk", k_transfer_robust="s/k.h5"))
    assert cfg.k_robust_log_dir == str(tmp_path / "rk") and cfg.k_robust == "last"
    assert cfg.k_transfer_robust == str(tmp_path / "s" / "k.h5")
    assert absolute_paths(_cfg(k_robust="r/k.h5")).k_robust == str(tmp_path / "r" / "k.h5")


def test_a_transfer_record_is_keyed_by_the_surrogate_its_defense_is_attacked_through(tmp_path):
    """The robust variants' transfer rows depend on --k-transfer-robust only, the plain
    UnMask's on --k-transfer only: changing one surrogate recomputes only its rows."""
    from defense.defenses import build_defense
    from defense.threats import Goal, Threat
    from evaluation.store.adaptive_store import AdaptiveStore
    paths = {}
    for name in ("a", "b"):
        paths[name] = str(tmp_path / ("%s.h5" % name))
        with open(paths[name], "wb") as f:
            f.write(name.encode())

    def fp(defense, **surrogates):
        cfg = _cfg(**surrogates)
        store = AdaptiveStore(cfg, None, {"run": 1}, lambda split: None, str(tmp_path),
                              lambda s: None)
        return store._adaptive_fp(build_defense(defense), "pgd_linf", 8.0, Threat.TRANSFER,
                                  Goal.WRONG)["surrogate"]

    for defense, own, other in (("unmask", "k_transfer", "k_transfer_robust"),
                                ("unmask:k=robust", "k_transfer_robust", "k_transfer"),
                                ("unmask:k=robust:m=at", "k_transfer_robust", "k_transfer")):
        base = fp(defense, **{own: paths["a"], other: paths["a"]})
        assert base is not None
        assert fp(defense, **{own: paths["b"], other: paths["a"]}) != base, defense
        assert fp(defense, **{own: paths["a"], other: paths["b"]}) == base, defense


def test_a_damaged_or_foreign_batch_progress_is_named_and_not_used(tmp_path):
    """A batch's saved state (``.batch-NNNN.progress.npz``) is used only when its fingerprint
    is the run's and it is whole; otherwise the log names it and the batch starts anew."""
    import numpy as np

    from attacks.engine import EngineProgress
    from evaluation.store.adaptive_store import (AdaptiveStore, _progress_arrays, _progress_fp,
                                                 _progress_path)
    from evaluation.store.records import canonical, write_npz

    logs = []
    store = AdaptiveStore(None, None, {}, None, str(tmp_path), logs.append)
    path = str(tmp_path / "test-pgd_linf_8.wrong.npz")
    fp = {"attack": "pgd_linf", "eps": 8.0, "batch": 0, "batch_size": 3}   # a batch's
    state = EngineProgress(done=np.array([2, 1, 0]), won=np.array([1, -1, -1]),
                           best=np.zeros((3, 4, 4, 3), np.float32),
                           best_loss=np.full(3, -np.inf),
                           route_evaluations=np.full((3, 2), 7, np.int64),
                           first_step=np.full((3, 2), -1, np.int64), seconds=12.5)

    def save(arrays, key=fp):
        write_npz(_progress_path(path, 0), dict(arrays, fingerprint=canonical(
            _progress_fp(key))))

    save(_progress_arrays(state))
    got = store._batch_progress(path, fp, 0, 3)
    assert got.seconds == 12.5
    for field in ("done", "won", "route_evaluations", "first_step"):
        np.testing.assert_array_equal(getattr(got, field), getattr(state, field))
    assert store._batch_progress(path, dict(fp, eps=4.0), 0, 3) is None   # another attack
    assert store._batch_progress(path, fp, 0, 5) is None                  # another batch size
    assert any("holds 3 rows for 5 images" in m for m in logs)
    arrays = _progress_arrays(state)
    del arrays["won"]
    save(arrays)
    assert store._batch_progress(path, fp, 0, 3) is None
    assert any("no array 'won'" in m and "recomputed" in m for m in logs)
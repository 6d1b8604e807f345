"""Adversarial examples for K's training losses (models/mrcnn/adversarial.py) and adversarial
training of a tiny K with them (issue 18, first part)."""
import os

import numpy as np
import pytest

from models.mrcnn import data_gen
from models.mrcnn.adversarial import KAdversarialSettings, KAdversary, window_mask
from models.mrcnn.model import MaskRCNN
from models.mrcnn.toy_data import ToyDataset
from mrcnn_config import get_config

#: Toy images smaller than K's 64-px input (with IMAGE_MIN_DIM 32 they are padded, not
#: upscaled), so part of each input is padding.
IMAGE_SIZE = 48


@pytest.fixture(scope="module")
def k_train(tmp_path_factory):
    """A tiny K in training mode (seeded random weights) and two batches of the toy set."""
    cfg = get_config("tiny", VALIDATION_STEPS=0, IMAGE_MIN_DIM=32)   # 48 px: not upscaled
    model = MaskRCNN("training", cfg, str(tmp_path_factory.mktemp("k_adv")), seed=0)
    ds = ToyDataset(4, IMAGE_SIZE, seed=0)
    rng = np.random.default_rng(0)
    batches = [data_gen.build_batch(ds, cfg, ids, rng)
               for ids in (ds.image_ids[:cfg.BATCH_SIZE], ds.image_ids[-cfg.BATCH_SIZE:])]
    yield model, cfg, batches
    model.close()


def _pixels(batch, cfg):
    return np.asarray(batch["input_image"], np.float64) + np.asarray(cfg.MEAN_PIXEL)


def test_settings_validate_and_name_the_flag():
    assert KAdversarialSettings().step == pytest.approx(2.5 * 8 / 3)
    assert KAdversarialSettings(eps=4, steps=2, step_size=1.0).step == 1.0
    s = KAdversarialSettings(eps=4, steps=5, mix=0.25)
    assert KAdversarialSettings.from_dict(s.to_dict()) == KAdversarialSettings(
        eps=4, steps=5, step_size=2.0, mix=0.25)
    for kwargs, flag in (({"eps": 0}, "--k-adv-eps"), ({"eps": float("nan")}, "--k-adv-eps"),
                         ({"steps": 0}, "--k-adv-steps"), ({"steps": 1.5}, "--k-adv-steps"),
                         ({"mix": 1.5}, "--k-adv-mix"), ({"mix": -0.1}, "--k-adv-mix")):
        with pytest.raises(ValueError, match=flag):
            KAdversarialSettings(**kwargs)


def test_adversarial_images_raise_ks_loss_and_stay_in_the_ball_and_range(k_train):
    model, cfg, batches = k_train
    for eps in (4.0, 8.0):
        adversary = KAdversary(model, KAdversarialSettings(eps=eps, steps=3))
        for batch in batches:
            clean_loss, _ = adversary.loss_and_grad(batch)
            adv = adversary.perturb(batch, seed=1)
            adv_loss, _ = adversary.loss_and_grad(adv)
            assert adv_loss > clean_loss * 1.05, (eps, clean_loss, adv_loss)
            x, x_adv = _pixels(batch, cfg), _pixels(adv, cfg)
            assert np.abs(x_adv - x).max() <= eps + 1e-3              # the eps-ball
            assert x_adv.min() >= -1e-3 and x_adv.max() <= 255 + 1e-3  # [0, 1] once / 255
            assert np.abs(x_adv - x).max() > eps / 2                  # it did move
            pad = window_mask(batch["input_image_meta"], x.shape[1:3]) == 0
            assert pad.any(), "the toy images should leave padding in K's input"
            np.testing.assert_array_equal(np.broadcast_to(pad, x.shape) * x_adv,
                                          np.broadcast_to(pad, x.shape) * x)  # padding kept
            for name in batch:                                     # ground truth unchanged
                if name != "input_image":
                    assert adv[name] is batch[name]


def test_mix_attacks_only_its_share_of_the_batch(k_train):
    model, cfg, batches = k_train
    batch = batches[0]
    b = len(batch["input_image"])
    half = KAdversary(model, KAdversarialSettings(mix=0.5)).mix(batch, seed=0)["input_image"]
    k = max(1, round(0.5 * b))
    assert not np.array_equal(half[:k], batch["input_image"][:k])
    np.testing.assert_array_equal(half[k:], batch["input_image"][k:])
    assert KAdversary(model, KAdversarialSettings(mix=0.0)).mix(batch, seed=0) is batch


def test_adversary_needs_a_training_model(tiny_k):
    with pytest.raises(ValueError, match="mode='training'"):
        KAdversary(tiny_k, KAdversarialSettings())


@pytest.mark.slow
def test_adversarial_training_raises_ks_accuracy_under_that_attack(tmp_path):
    """Two tiny Ks from the same seed, schedule and toy images, one trained with half of each
    batch attacked (PGD eps 16/255, 3 steps): under PGD on K's losses (eps 16, 5 steps) the
    standard K loses parts or masks, the adversarially trained one keeps at least as many
    parts and clearly more of its masks -- measured by
    the real evaluation (part-set F1 and mask mAP@.5 of the inference K on the attacked
    8-bit images)."""
    from models.mrcnn.evaluate import evaluate_dataset
    from models.mrcnn.robustness import evaluate_under_attack
    from models.mrcnn.toy_data import TOY_CLASSES
    names = ["BG"] + list(TOY_CLASSES)
    ds = ToyDataset(4, 64, seed=0)
    ids = list(ds.image_ids)
    cfg = get_config("tiny", STEPS_PER_EPOCH=75, LEARNING_RATE=0.02, VALIDATION_STEPS=0)
    scores = {}
    for robust in (False, True):
        log_dir = str(tmp_path / ("robust" if robust else "standard"))
        model, infer = MaskRCNN("training", cfg, log_dir, seed=0), None
        try:
            infer = MaskRCNN("inference", get_config("tiny"), log_dir)
            if robust:
                model.trainer.adversary = KAdversary(model, KAdversarialSettings(eps=16, steps=3))
            history = []
            for epoch in range(1, 9):
                lr = cfg.LEARNING_RATE if epoch <= 6 else cfg.LEARNING_RATE / 5
                history += model.train(ds, None, lr, epoch, "all", progress=False)
            infer.load_weights(history[-1]["checkpoint"])
            clean = evaluate_dataset(infer, ds, image_ids=ids, class_names=names)
            attacked = evaluate_under_attack(infer, model, ds, ids, eps_list=(16,), steps=5,
                                             seed=3, class_names=names)["16"]
        finally:
            model.close()
            if infer is not None:
                infer.close()
        assert clean["part_sets"]["f1_micro"] >= 0.9, (robust, clean["part_sets"])
        scores[robust] = (attacked["part_sets"]["f1_micro"], attacked["segm"]["mAP50"])
    (f1_std, map_std), (f1_rob, map_rob) = scores[False], scores[True]
    # measured on the 2-core CI machine: standard K (F1 .93, mAP .89), robust K (1.0, 1.0)
    assert min(f1_std, map_std) < 0.95, ("the attack must hurt the standard K for the "
                                         "comparison to mean much", scores)
    assert f1_rob >= f1_std and map_rob >= map_std + 0.1, scores


def test_a_robust_k_is_never_taken_for_a_standard_one_nor_back(tmp_path):
    """train_model_k with the adversary writes mask_rcnn_<name>_robust_*.h5 and records
    ADV_TRAIN; the checkpoint search and an explicit path refuse the wrong kind both ways."""
    from evaluation import model_k
    from models.mrcnn.model import find_last_checkpoint, resolve_checkpoint

    settings = KAdversarialSettings(eps=4, steps=1, mix=0.5)
    logs = str(tmp_path / "logs")
    kwargs = dict(epochs="1", steps_per_epoch=1, log_dir=logs, progress=False,
                  train_dataset=ToyDataset(2, 64, seed=0), val_dataset=None,
                  data_dir=str(tmp_path / "no-data"))
    standard_cfg = get_config("tiny")
    robust_cfg = model_k.robust_config(standard_cfg, settings)
    # run_model_k passes the robust configuration itself: it is not renamed a second time
    assert model_k.robust_config(robust_cfg, settings).NAME == robust_cfg.NAME == "tiny_robust"
    robust = model_k.train_model_k(config=robust_cfg, adversarial=settings,
                                   **kwargs)["checkpoint"]
    assert os.path.basename(robust).startswith("mask_rcnn_tiny_robust_0")
    assert robust_cfg.ADV_TRAIN == settings.to_dict() and "ADV_TRAIN" not in standard_cfg.to_dict()
    assert find_last_checkpoint(logs, robust_cfg.NAME, robust_cfg) == robust
    # only a robust K there: its run (tiny_robust...) is not a run of the standard name
    with pytest.raises(FileNotFoundError, match="no model K checkpoint under .*--k-config tiny "):
        find_last_checkpoint(logs, standard_cfg.NAME, standard_cfg)
    with pytest.raises(ValueError, match="is a robust K .* a standard K is asked for"):
        resolve_checkpoint(robust, logs, standard_cfg.NAME, standard_cfg)
    standard = model_k.train_model_k(config="tiny", **kwargs)["checkpoint"]
    assert os.path.basename(standard).startswith("mask_rcnn_tiny_0")
    assert find_last_checkpoint(logs, standard_cfg.NAME, standard_cfg) == standard
    assert find_last_checkpoint(logs, robust_cfg.NAME, robust_cfg) == robust
    with pytest.raises(ValueError, match="is a standard K .* a robust K is asked for"):
        resolve_checkpoint(standard, logs, robust_cfg.NAME, robust_cfg)


def test_model_k_adv_train_options_build_a_robust_k_in_its_own_folders():
    from evaluation import model_k
    from evaluation.options import ROBUST_K_DIRS, parse_args

    k = parse_args(["--model", "K", "--adv-train", "--k-adv-eps", "4"]).k_options()
    assert k["adv_train"] and k["k_log_dir"] == ROBUST_K_DIRS["k_log_dir"]
    assert k["k_results_dir"] == ROBUST_K_DIRS["k_results_dir"]
    assert model_k.adversarial_settings(k) == KAdversarialSettings(eps=4, steps=3, mix=0.5)
    given = parse_args(["--model", "K", "--adv-train", "--k-log-dir", "elsewhere"]).k_options()
    assert given["k_log_dir"] == "elsewhere"
    for argv in (["--model", "K"], ["--model", "M", "--adv-train"]):   # M's AT: a standard K
        k = parse_args(argv).k_options()
        assert not k["adv_train"] and model_k.adversarial_settings(k) is None
        assert k["k_log_dir"] == os.path.join("logs", "model_k")

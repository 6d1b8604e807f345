"""Adversarial examples for K's training losses (models/mrcnn/adversarial.py) and adversarial
training of a tiny K with them (issue 18, first part)."""
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
def test_adversarial_training_lowers_ks_loss_under_that_attack(tmp_path):
    """Two tiny Ks from the same seed and batches, one trained with half of each batch
    attacked: under the same PGD (eps 8, 5 steps) on held-out toy images, the adversarially
    trained K's training loss is lower."""
    ds = ToyDataset(8, IMAGE_SIZE, seed=0)
    held_out = ToyDataset(4, IMAGE_SIZE, seed=7)
    cfg = get_config("tiny", STEPS_PER_EPOCH=60, LEARNING_RATE=0.02, VALIDATION_STEPS=0)
    attack = KAdversarialSettings(eps=8, steps=5)
    losses = {}
    for robust in (False, True):
        model = MaskRCNN("training", cfg, str(tmp_path / str(robust)), seed=0)
        try:
            if robust:
                model.trainer.adversary = KAdversary(model, KAdversarialSettings(eps=8, steps=3))
            model.train(ds, None, cfg.LEARNING_RATE, 3, "all", progress=False)
            judge = KAdversary(model, attack)
            rng = np.random.default_rng(3)
            values = []
            for start in range(0, len(held_out.image_ids), cfg.BATCH_SIZE):
                ids = held_out.image_ids[start:start + cfg.BATCH_SIZE]
                batch = data_gen.build_batch(held_out, cfg, ids, rng)
                values.append(judge.loss_and_grad(judge.perturb(batch, seed=start))[0])
            losses[robust] = float(np.mean(values))
        finally:
            model.close()
    assert losses[True] < 0.9 * losses[False], losses

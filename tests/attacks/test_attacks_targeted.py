"""Tests of the targeted variants (``targeted=True``) of the iterative attacks and of ``bim_l2``.

With ``targeted=True`` every image gets a random target class ``!= its label``, drawn as
``ga``'s (``attacks.ga_targets`` with the batch seed ``(seed, batch_index)``), and the attack
minimises the target's loss; the runner reports the targets and counts ``pred_adv == target``
as success.  Untargeted configs must stay exactly what they were before the option existed
(their ``as_dict()`` enters the evaluation's fingerprints).

The toy is the 10-class task of test_attacks_seed004.py (16x16 grey noise plus a faint +-1
pattern of the class; a tiny conv net learns it): with 9 candidate targets per image a
targeted success cannot come from an untargeted attack by chance (about 1 in 9), whereas on
the 3-class colour toy of test_attacks.py half of the untargeted successes would "hit" the
target.
"""
import tfcompat

import numpy as np
import pytest

import attacks
from attacks import _utils
from attacks.registry import resolve_config

tf, keras = tfcompat.import_tf()


NUM_CLASSES = 10
SIZE = 16
BATCH = 12                        # 32 test images -> batches of 12, 12, 8
TOL = 1e-5                        # [0, 1] units
TARGETED = ["pgd_linf", "pgd_l2", "mia_linf", "mia_l2", "bim", "bim_l2", "cw_l2"]
STRONG = {"linf": {"eps": 16.0}, "l2": {"eps": 500.0}}      # 0-255 scale
CW_PARAMS = {"steps": 25, "binary_search_steps": 3, "learning_rate": 0.05,
             "initial_const": 1.0}


def _budget(name):
    return dict(CW_PARAMS) if name == "cw_l2" else dict(STRONG[attacks.get_attack(name).norm])


def _run_targets(labels, batch_size, seed):
    """``ga_targets`` of each image of a run: batch i is drawn with the seed (seed, i)."""
    return np.concatenate([
        attacks.ga_targets(labels[begin:begin + batch_size], NUM_CLASSES,
                           tf.constant([seed, index], tf.int64)).numpy()
        for index, begin in enumerate(range(0, labels.shape[0], batch_size))])


def _max_norm(x_adv, images, norm):
    return float(tf.reduce_max(_utils.per_sample_norm(tf.constant(x_adv - images), norm)))


def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


# --------------------------------------------------------------------------- configs

def test_untargeted_configs_are_unchanged():
    """The literal dicts of today's default configs: no ``targeted`` key anywhere."""
    assert resolve_config("pgd_linf", 8).as_dict() == {
        "name": "pgd_linf", "norm": "linf", "eps": 8.0, "steps": 20, "step_size": 2.0,
        "params": {"rand_init": True}}
    assert resolve_config("mia_l2", 300).as_dict() == {
        "name": "mia_l2", "norm": "l2", "eps": 300.0, "steps": 20, "step_size": 15.0,
        "params": {"decay": 1.0}}
    assert resolve_config("bim", 8).as_dict() == {
        "name": "bim", "norm": "linf", "eps": 8.0, "steps": 20, "step_size": 1.0, "params": {}}
    assert resolve_config("cw_l2").as_dict() == {
        "name": "cw_l2", "norm": "l2", "eps": None, "steps": 100, "step_size": None,
        "params": {"binary_search_steps": 5, "initial_const": 0.1, "learning_rate": 0.01,
                   "confidence": 0.0}}
    for name in TARGETED:
        default = resolve_config(name)
        assert "targeted" not in dict(default.params) and not default.targeted
        assert resolve_config(name, targeted=False) == default
        assert hash(resolve_config(name, targeted=False)) == hash(default)
        targeted = resolve_config(name, targeted=True)
        assert targeted.targeted and dict(targeted.params)["targeted"] is True
        assert targeted.as_dict() != default.as_dict()
        rest = {k: v for k, v in targeted.params if k != "targeted"}
        assert rest == dict(default.params)
        assert (targeted.eps, targeted.steps, targeted.step_size) == (
            default.eps, default.steps, default.step_size)
    assert resolve_config("ga").targeted                 # always targeted, no parameter


def test_bim_l2_defaults():
    config = resolve_config("bim_l2")
    assert config.as_dict() == {"name": "bim_l2", "norm": "l2", "eps": 300.0, "steps": 20,
                                "step_size": 2.5 * 300.0 / 20, "params": {}}
    assert resolve_config("bim_l2", 600, steps=10).step_size == pytest.approx(150.0)
    _raises("step_size", resolve_config, "bim_l2", 100, step_size=200)


def test_targeted_parameter_validated():
    for name in ("fgsm", "uap", "uap_l2"):
        _raises("no targeted variant", resolve_config, name, targeted=True)
        assert resolve_config(name, targeted=False) == resolve_config(name)     # a no-op
    for flag in (True, False):
        _raises("always attacks random targets", resolve_config, "ga", targeted=flag)
    _raises("True or False", resolve_config, "bim", 8, targeted="yes")
    _raises("True or False", resolve_config, "pgd_l2", 300, targeted=1)
    assert resolve_config("bim", 8, targeted=np.bool_(True)).params == (("targeted", True),)
    with pytest.raises(ValueError, match="targeted") as info:
        resolve_config("bim", 8, rand_init=False)
    assert "valid extra parameters: ['targeted']" in str(info.value)


# --------------------------------------------------------------------- targeted runs

@pytest.fixture(scope="module")
def targeted_runs(pattern_toy):
    """Lazily ``name -> (CompiledAttack, AttackResult)``: targeted, strong budget, seed 3."""
    model, _, images, labels = pattern_toy
    cache = {}

    def get(name):
        if name not in cache:
            compiled = attacks.compile_attack(model, name, targeted=True, **_budget(name))
            cache[name] = (compiled, compiled.run(images, labels, batch_size=BATCH, seed=3))
        return cache[name]
    return get


@pytest.mark.parametrize("name", TARGETED)
def test_targeted_attack_reaches_ga_targets_within_the_ball(name, pattern_toy, targeted_runs):
    model, _, images, labels = pattern_toy
    compiled, result = targeted_runs(name)
    targets = result.targets
    assert targets.dtype == np.int64 and targets.shape == labels.shape
    assert np.all(targets != labels) and targets.min() >= 0 and targets.max() < NUM_CLASSES
    np.testing.assert_array_equal(targets, _run_targets(labels, BATCH, 3))
    assert result.config.targeted
    np.testing.assert_array_equal(result.pred_adv, model.predict(result.x_adv, verbose=0).argmax(1))
    np.testing.assert_array_equal(result.success, result.pred_adv == targets)
    assert result.success_rate >= 0.8, (name, result.success_rate)
    assert result.target_success_rate == result.success_rate
    assert result.x_adv.dtype == np.float32
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    if result.config.eps is not None:
        assert _max_norm(result.x_adv, images, result.config.norm) <= \
            result.config.eps / 255.0 + TOL
    assert compiled.tracing_count == 1                  # 3 batches (12, 12, 8), one trace


@pytest.mark.parametrize("name", TARGETED)
def test_targeted_run_is_reproducible_and_seeded(name, pattern_toy, targeted_runs):
    model, _, images, labels = pattern_toy
    _, first = targeted_runs(name)
    again = attacks.run_attack(model, images, labels, name, batch_size=BATCH, seed=3,
                               targeted=True, **_budget(name))
    np.testing.assert_array_equal(again.x_adv, first.x_adv)
    np.testing.assert_array_equal(again.targets, first.targets)
    other = attacks.run_attack(model, images, labels, name, batch_size=BATCH, seed=4,
                               targeted=True, **_budget(name))
    np.testing.assert_array_equal(other.targets, _run_targets(labels, BATCH, 4))
    assert np.mean(other.targets != first.targets) > 0.5


@pytest.mark.parametrize("name", TARGETED)
def test_untargeted_run_unchanged_by_the_option(name, pattern_toy, targeted_runs):
    """``targeted=False`` is the default: the same x_adv, targets -1, success = pred != label;
    an untargeted attack hits the random targets only by chance."""
    model, _, images, labels = pattern_toy
    kwargs = dict(batch_size=BATCH, seed=3, **_budget(name))
    default = attacks.run_attack(model, images, labels, name, **kwargs)
    explicit = attacks.run_attack(model, images, labels, name, targeted=False, **kwargs)
    np.testing.assert_array_equal(explicit.x_adv, default.x_adv)
    assert explicit.config == default.config and not default.config.targeted
    np.testing.assert_array_equal(default.targets, np.full(labels.shape, -1))
    np.testing.assert_array_equal(default.success, default.pred_adv != labels)
    assert np.isnan(default.target_success_rate)
    _, targeted = targeted_runs(name)
    assert default.success_rate >= 0.8
    assert np.mean(default.pred_adv == targeted.targets) <= targeted.success_rate - 0.5
    assert not np.array_equal(targeted.x_adv, default.x_adv)


def test_attack_batch_uses_the_batch_seed_for_targets(pattern_toy, targeted_runs):
    _, _, images, labels = pattern_toy
    compiled, result = targeted_runs("bim")
    second = compiled.attack_batch(images[BATCH:2 * BATCH], labels[BATCH:2 * BATCH], seed=3,
                                   batch_index=1)
    np.testing.assert_array_equal(second, result.x_adv[BATCH:2 * BATCH])


def test_targeted_without_labels_and_with_zero_eps(pattern_toy):
    model, _, images, labels = pattern_toy
    no_labels = attacks.run_attack(model, images, None, "bim", 16, targeted=True,
                                   batch_size=BATCH, seed=1)
    np.testing.assert_array_equal(no_labels.labels, no_labels.pred_clean)
    assert np.all(no_labels.targets != no_labels.pred_clean)
    np.testing.assert_array_equal(no_labels.targets,
                                  _run_targets(no_labels.pred_clean, BATCH, 1))
    assert no_labels.success_rate >= 0.8
    zero = attacks.run_attack(model, images, labels, "pgd_linf", 0, targeted=True,
                              batch_size=BATCH, seed=1)
    np.testing.assert_array_equal(zero.x_adv, images)
    np.testing.assert_array_equal(zero.targets, _run_targets(labels, BATCH, 1))
    np.testing.assert_array_equal(zero.success, zero.pred_clean == zero.targets)


def test_direct_targeted_call_needs_a_seed(pattern_toy):
    from attacks.bim import bim
    from attacks.cw import cw_l2
    model, _, images, labels = pattern_toy
    x, y = tf.constant(images[:4]), tf.constant(labels[:4])
    _raises("seed", bim, model, x, y, eps=0.1, step_size=0.01, steps=2, targeted=True)
    _raises("seed", cw_l2, model, x, y, steps=2, binary_search_steps=1, targeted=True)
    seed = tf.constant([3, 0], tf.int64)
    out = bim(model, x, y, eps=16 / 255, step_size=1 / 255, steps=20, seed=seed, targeted=True)
    targets = attacks.ga_targets(y, NUM_CLASSES, seed).numpy()
    assert np.mean(model.predict(out.numpy(), verbose=0).argmax(1) == targets) >= 0.75


def test_ga_reports_its_targets_and_keeps_its_success(pattern_toy):
    """``ga`` is targeted by construction: its targets are now reported, its ``success`` stays
    "prediction != label" (backward compatible)."""
    model, _, images, labels = pattern_toy
    result = attacks.run_attack(model, images, labels, "ga", 16, batch_size=BATCH, seed=5)
    np.testing.assert_array_equal(result.targets, _run_targets(labels, BATCH, 5))
    np.testing.assert_array_equal(result.success, result.pred_adv != labels)
    assert result.config.targeted and "targeted" not in dict(result.config.params)
    assert result.target_success_rate >= 0.9

"""Tests of the attack package on a small, seeded, quickly trained tf-keras classifier.

The toy task: 16x16 RGB noise images whose class (0, 1, 2) brightens one colour channel.  A
tiny conv net learns it almost perfectly; the attacks must then push its accuracy down while
staying in [0, 1] and inside their eps-ball.

Universal attacks (one perturbation for all images, e.g. ``uap``) are swept on a second toy,
``pattern_toy`` (10 classes, each a faint random +-1 pattern over all pixels), fitted on its
training images: on the colour toy one additive v can favour only one channel, so it fools at
most 2/3 of the images, and UAP's DeepFool updates pull v back and forth between the three
classes (fooling rates of 0-0.7 depending on the seed); with high-dimensional class patterns
one v pushes every image towards the same class.  Per-attack tests: test_attacks_seed004.py.
"""
import tfcompat

import numpy as np
import pytest

import attacks
from attacks import _utils
from attacks.registry import resolve_config

tf, keras = tfcompat.import_tf()

from toys import CHANNEL_CLASSES as NUM_CLASSES  # noqa: E402

TOL = 1e-5                     # float tolerance on the ball constraint, [0, 1] units
STRONG_EPS = {"linf": 32.0, "l2": 1000.0}   # 0-255 scale; strong enough for the toy model
CW_PARAMS = {"steps": 25, "binary_search_steps": 3, "learning_rate": 0.05,
             "initial_const": 1.0}
BATCH = 12                     # does not divide the 32 test images: last batch has 8


@pytest.fixture(scope="module")
def toy_for(request):
    """``name -> (model, test images, labels, fit images or None)``: the toy an attack is swept
    on (universal attacks: ``pattern_toy``, fitted on its training images)."""
    def get(name):
        if attacks.get_attack(name).universal:
            model, x_train, x_test, y_test = request.getfixturevalue("pattern_toy")
            return model, x_test, y_test, x_train
        return request.getfixturevalue("toy") + (None,)
    return get


def _strong_kwargs(name):
    if name == "cw_l2":
        return dict(CW_PARAMS)
    out = {"eps": STRONG_EPS[attacks.get_attack(name).norm]}
    if name.startswith(("apgd", "autoattack")):
        out["steps"] = 20          # 100 by default; the toy falls in a few
    return out


@pytest.fixture(scope="module")
def strong_runs(toy_for):
    """Lazily computed ``name -> (CompiledAttack, AttackResult)`` with a strong budget."""
    cache = {}

    def get(name):
        if name not in cache:
            model, images, labels, fit_images = toy_for(name)
            compiled = attacks.compile_attack(model, name, **_strong_kwargs(name))
            if fit_images is not None:
                compiled.fit(fit_images, seed=3)
            cache[name] = (compiled, compiled.run(images, labels, batch_size=BATCH, seed=3))
        return cache[name]
    return get


def _max_norm(x_adv, images, norm):
    delta = tf.convert_to_tensor(x_adv - images)
    return float(tf.reduce_max(_utils.per_sample_norm(delta, norm)))


# ----------------------------------------------------------------------------- registry

def test_registry_lists_all_attacks_with_norms():
    assert attacks.list_attacks() == ["pgd_linf", "pgd_l2", "mia_linf", "mia_l2", "fgsm", "bim",
                                      "bim_l2", "cw_l2", "ga", "uap", "uap_l2", "apgd_ce",
                                      "apgd_dlr", "apgd_ce_l2", "apgd_dlr_l2", "apgd_t",
                                      "apgd_t_l2", "autoattack", "autoattack_l2"]
    for name in attacks.list_attacks():
        spec = attacks.get_attack(name)
        assert spec.name == name and spec.norm in _utils.NORMS
        assert spec.norm == ("l2" if name.endswith("l2") else "linf")
    assert attacks.get_attack("PGD-Linf") is attacks.ATTACKS["pgd_linf"]


def test_paper_attack_vectors_order_and_names():
    expected = [("pgd_linf", 8), ("pgd_linf", 16), ("pgd_l2", 300), ("pgd_l2", 600),
                ("mia_linf", 8), ("mia_linf", 16), ("mia_l2", 300), ("mia_l2", 600)]
    assert [(n, int(e)) for n, e in attacks.PAPER_ATTACK_VECTORS] == expected
    for name, eps in attacks.PAPER_ATTACK_VECTORS:
        config = resolve_config(name, eps)
        assert config.steps == 20 and config.eps == eps


def test_default_steps_follow_the_paper():
    assert resolve_config("pgd_linf", 8).step_size == pytest.approx(2.0)
    assert resolve_config("pgd_linf", 1).step_size == pytest.approx(1.0)   # capped at eps
    assert resolve_config("mia_linf", 16).step_size == pytest.approx(16 / 20)
    assert resolve_config("mia_l2", 300).step_size == pytest.approx(300 / 20)
    assert resolve_config("pgd_l2", 600).step_size == pytest.approx(2.5 * 600 / 20)
    assert resolve_config("bim_l2").step_size == pytest.approx(2.5 * 300 / 20)
    assert dict(resolve_config("mia_l2", 300).params)["decay"] == 1.0
    custom = resolve_config("pgd_l2", 300, steps=10, step_size=50, rand_init=False)
    assert (custom.steps, custom.step_size, dict(custom.params)["rand_init"]) == (10, 50, False)
    assert resolve_config("cw_l2").eps is None


# ------------------------------------------------------------------- every registered attack

@pytest.mark.parametrize("name", attacks.list_attacks())
def test_attack_output_valid_and_lowers_accuracy(name, toy_for, strong_runs):
    model, images, labels, _ = toy_for(name)
    compiled, result = strong_runs(name)
    assert result.x_adv.shape == images.shape and result.x_adv.dtype == np.float32
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    config = result.config
    if config.eps is not None:
        assert _max_norm(result.x_adv, images, config.norm) <= config.eps / 255.0 + TOL
    assert not np.array_equal(result.x_adv, images)
    np.testing.assert_array_equal(result.pred_clean, model.predict(images, verbose=0).argmax(1))
    np.testing.assert_array_equal(result.pred_adv, model.predict(result.x_adv, verbose=0).argmax(1))
    np.testing.assert_array_equal(result.success, result.pred_adv != labels)
    assert result.success_rate == pytest.approx(1.0 - result.adv_accuracy)
    assert result.clean_accuracy >= 0.9
    assert result.adv_accuracy <= result.clean_accuracy - 0.5, (name, result.adv_accuracy)
    assert compiled.tracing_count == 1   # 3 batches (12, 12, 8) -> one trace


@pytest.mark.parametrize("name", attacks.list_attacks())
def test_eps_zero_returns_input_unchanged(name, toy):
    model, images, labels = toy
    result = attacks.run_attack(model, images, labels, name, eps=0, batch_size=BATCH)
    np.testing.assert_array_equal(result.x_adv, images)
    np.testing.assert_array_equal(result.success, result.pred_clean != labels)
    np.testing.assert_array_equal(result.pred_adv, result.pred_clean)


@pytest.mark.parametrize("name", attacks.list_attacks())
def test_same_seed_gives_same_result(name, toy_for, strong_runs):
    model, images, labels, fit_images = toy_for(name)
    _, first = strong_runs(name)
    again = attacks.run_attack(model, images, labels, name, batch_size=BATCH, seed=3,
                               fit_images=fit_images, **_strong_kwargs(name))
    np.testing.assert_array_equal(again.x_adv, first.x_adv)


@pytest.mark.parametrize("name", attacks.list_attacks())
def test_reuse_with_other_batch_size_does_not_retrace(name, toy_for, strong_runs):
    """Re-running the compiled attack with other batch sizes reuses the single trace; for the
    deterministic attacks the result is per sample, so it does not depend on the batching
    (``ga`` is not: its random targets are drawn per batch from ``(seed, batch_index)``)."""
    _, images, labels, _ = toy_for(name)
    compiled, first = strong_runs(name)
    other = compiled.run(images, labels, batch_size=5, seed=3)
    assert compiled.tracing_count == 1
    assert compiled.probe_count == 1      # the model's output is checked on the first run only
    if not (dict(compiled.config.params).get("rand_init", False) or name == "ga"):
        changed = np.abs(other.x_adv - first.x_adv) > 1e-4
        assert changed.mean() < 0.01, (name, changed.mean())


def test_label_range_checked_on_every_run_after_the_first_probe(toy):
    """The eager probe of the model runs once, but a later run with a label the model has no
    logit for is still rejected."""
    model, images, labels = toy
    compiled = attacks.compile_attack(model, "fgsm", 8)
    compiled.run(images[:4], labels[:4])
    bad = labels[:4].copy()
    bad[0] = NUM_CLASSES
    _raises("num_classes = %d" % NUM_CLASSES, compiled.run, images[:4], bad)
    assert compiled.probe_count == 1


def test_random_start_depends_on_seed_only(toy):
    model, images, labels = toy
    compiled = attacks.compile_attack(model, "pgd_l2", 300, steps=2)
    a = compiled.run(images, labels, batch_size=BATCH, seed=1).x_adv
    b = compiled.run(images, labels, batch_size=BATCH, seed=1).x_adv
    c = compiled.run(images, labels, batch_size=BATCH, seed=2).x_adv
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", ["pgd_l2", "ga"])
def test_a_run_split_at_batch_boundaries_equals_the_whole_run(name, toy):
    """Shards with their first batch index (random starts / random targets keyed by
    (seed, batch index)) concatenate to the whole run bit for bit; the wrong index does
    not."""
    model, images, labels = toy
    compiled = attacks.compile_attack(model, name, steps=2)
    whole = compiled.run(images, labels, batch_size=BATCH, seed=1)
    head = compiled.run(images[:BATCH], labels[:BATCH], batch_size=BATCH, seed=1)
    tail = compiled.run(images[BATCH:], labels[BATCH:], batch_size=BATCH, seed=1,
                        first_batch=1)
    for key in ("x_adv", "pred_adv", "targets"):
        np.testing.assert_array_equal(
            np.concatenate([getattr(head, key), getattr(tail, key)]), getattr(whole, key))
    shifted = compiled.run(images[BATCH:], labels[BATCH:], batch_size=BATCH, seed=1)
    assert not np.array_equal(shifted.x_adv, tail.x_adv)
    with pytest.raises(ValueError, match="first_batch must be a non-negative integer"):
        compiled.run(images, labels, first_batch=-1)


def test_labels_none_attacks_clean_predictions(toy):
    model, images, _ = toy
    result = attacks.run_attack(model, images, None, "fgsm", eps=32, batch_size=BATCH)
    np.testing.assert_array_equal(result.labels, result.pred_clean)
    np.testing.assert_array_equal(result.success, result.pred_adv != result.pred_clean)
    assert result.success.mean() > 0.5


def test_cw_with_eps_cap_stays_in_ball(toy):
    model, images, labels = toy
    result = attacks.run_attack(model, images, labels, "cw_l2", eps=100, batch_size=BATCH,
                                **CW_PARAMS)
    assert _max_norm(result.x_adv, images, "l2") <= 100 / 255.0 + TOL


def test_attack_batch_and_progress(toy):
    model, images, labels = toy
    compiled = attacks.compile_attack(model, "bim", 16, steps=3)
    calls = []
    result = compiled.run(images, labels, batch_size=BATCH,
                          progress=lambda done, total: calls.append((done, total)))
    assert calls == [(12, 32), (24, 32), (32, 32)]
    single = compiled.attack_batch(images[:BATCH], labels[:BATCH])
    np.testing.assert_allclose(single, result.x_adv[:BATCH], atol=1e-6)
    with_bar = compiled.run(images, labels, batch_size=BATCH, progress=True)
    np.testing.assert_array_equal(with_bar.x_adv, result.x_adv)
    assert compiled.tracing_count == 1
    _raises("progress", compiled.run, images, labels, progress="yes")


def _cleverhans_reference(name, model, x, y, eps, step):
    """The same attack run eagerly through cleverhans' own (unrolled) drivers."""
    from cleverhans.tf2.attacks.basic_iterative_method import basic_iterative_method
    from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent
    order = np.inf if name.endswith("linf") or name == "bim" else 2   # bim_l2: PGD-L2 from x
    common = dict(clip_min=0.0, clip_max=1.0, y=y, sanity_checks=False)
    if name.startswith("mia"):
        return momentum_iterative_method(model, x, eps, step, 5, order, decay_factor=1.0,
                                         **common)
    if name == "bim":
        return basic_iterative_method(model, x, eps, step, 5, order, **common)
    return projected_gradient_descent(model, x, eps, step, 5, order, rand_init=False, **common)


@pytest.mark.parametrize("name", ["pgd_linf", "pgd_l2", "mia_linf", "mia_l2", "bim", "bim_l2"])
def test_matches_cleverhans_drivers(name, toy):
    """Our while-loop drivers reproduce cleverhans' unrolled ones (no random start)."""
    model, images, labels = toy
    eps = 16.0 if attacks.get_attack(name).norm == "linf" else 300.0
    params = {"rand_init": False} if name.startswith("pgd") else {}
    ours = attacks.run_attack(model, images, labels, name, eps, steps=5, batch_size=32, **params)
    step = ours.config.step_size / 255.0
    ref = _cleverhans_reference(name, model, tf.constant(images), labels, eps / 255.0, step)
    mismatch = np.abs(ours.x_adv - ref.numpy()) > 1e-4
    assert mismatch.mean() < 0.001, (name, mismatch.mean())


# ------------------------------------------------------------------------ shared maths

@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_and_random_start_stay_in_ball(norm):
    rng = np.random.default_rng(1)
    x = tf.constant(rng.random((4, 8, 8, 3)), tf.float32)
    far = tf.constant(rng.normal(0, 2, (4, 8, 8, 3)), tf.float32)
    eps = 0.05 if norm == "linf" else 0.5
    projected = _utils.project(x + far, x, norm, eps)
    assert float(tf.reduce_max(_utils.per_sample_norm(projected - x, norm))) <= eps + TOL
    assert float(tf.reduce_min(projected)) >= 0 and float(tf.reduce_max(projected)) <= 1
    start = _utils.random_start(x, norm, eps, tf.constant([5, 0], tf.int64))
    again = _utils.random_start(x, norm, eps, tf.constant([5, 0], tf.int64))
    np.testing.assert_array_equal(start.numpy(), again.numpy())
    assert float(tf.reduce_max(_utils.per_sample_norm(start - x, norm))) <= eps + TOL
    assert float(tf.reduce_min(_utils.per_sample_norm(start - x, norm))) > 0


def test_package_imports_no_other_project_module():
    """attacks/ may import only itself, tfcompat and the project's one image rule
    (data.images, which imports nothing of the project) -- SPEC import rule."""
    import ast
    import pathlib
    root = pathlib.Path(attacks.__file__).parent
    project = {p.name for p in root.parent.iterdir() if p.is_dir() or p.suffix == ".py"}
    project = {name[:-3] if name.endswith(".py") else name for name in project}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert (top in ("attacks", "tfcompat") or module == "data.images"
                        or top not in project), (path.name, module)


# ------------------------------------------------------------------------- validation

def _raises(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kwargs)


def test_unknown_name_lists_valid_names(toy):
    model, images, labels = toy
    with pytest.raises(ValueError) as info:
        attacks.run_attack(model, images, labels, "deepfool", 8)
    for name in attacks.list_attacks():
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["pgd_linf", "mia_linf", "bim", "pgd_l2", "bim_l2"])
def test_step_larger_than_eps_rejected(name):
    _raises("step_size", resolve_config, name, 4, step_size=6)


def test_bad_parameters_rejected(toy):
    model, images, labels = toy
    _raises("eps", attacks.run_attack, model, images, labels, "pgd_linf", -1)
    _raises("eps", resolve_config, "pgd_l2", float("nan"))
    _raises("steps", resolve_config, "fgsm", 8, steps=5)
    _raises("steps", resolve_config, "pgd_linf", 8, steps=0)
    _raises("step_size", resolve_config, "fgsm", 8, step_size=1)
    _raises("step_size", resolve_config, "cw_l2", step_size=1)
    _raises("rand_init", resolve_config, "mia_l2", 300, rand_init=True)
    _raises("batch_size", attacks.run_attack, model, images, labels, "fgsm", 8, batch_size=0)
    _raises("seed", attacks.run_attack, model, images, labels, "fgsm", 8, seed=-1)
    _raises("callable", attacks.compile_attack, "not a model", "fgsm")


def test_bad_images_and_labels_rejected(toy):
    model, images, labels = toy
    run = attacks.run_attack
    _raises(r"\[0, 1\]", run, model, images * 255.0, labels, "fgsm", 8)
    _raises("rank 4", run, model, images[0], labels[:1], "fgsm", 8)
    _raises("3 channels", run, model, images[..., :2], labels, "fgsm", 8)
    _raises("NaN", run, model, np.full_like(images, np.nan), labels, "fgsm", 8)
    _raises("length", run, model, images, labels[:-1], "fgsm", 8)
    _raises("1-D", run, model, images, np.eye(NUM_CLASSES)[labels], "fgsm", 8)
    _raises("num_classes", run, model, images, labels + NUM_CLASSES, "fgsm", 8)
    _raises(">= 0", run, model, images, labels - 5, "fgsm", 8)


def test_compiled_attack_sees_weight_updates_without_retracing():
    """Adversarial training reuses one CompiledAttack while the weights change."""
    tf.random.set_seed(1)
    model = keras.Sequential([keras.layers.Flatten(input_shape=(4, 4, 3)),
                              keras.layers.Dense(NUM_CLASSES)])
    images = np.random.default_rng(2).random((6, 4, 4, 3)).astype(np.float32)
    compiled = attacks.compile_attack(model, "pgd_linf", 8, steps=2)
    before = compiled.run(images, None).pred_clean
    kernel, bias = model.layers[1].weights
    kernel.assign(tf.zeros_like(kernel))
    bias.assign([0.0, 5.0, 0.0])
    after = compiled.run(images, None)
    assert not np.all(before == 1)
    np.testing.assert_array_equal(after.pred_clean, np.ones(6))
    assert compiled.tracing_count == 1

"""The defense bench: the registry swept whole on a hand-made context, the report tables, and
the evaluation with several defenses (same attacked images, nothing recomputed)."""
import json
import os

import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from data.knowledge import CLASS_PARTS, get_class_set  # noqa: E402
from defense.base import REJECTED, ATModel, FitContext, ImageSet  # noqa: E402
from defense.threats import Goal, Threat  # noqa: E402
from defense.defenses import (DEFENSES, build_defense, parse_defense,  # noqa: E402
                              parse_defenses)
from evaluation import schema  # noqa: E402
from evaluation.report import comparison_table, writer  # noqa: E402
from evaluation.results import robustness  # noqa: E402

CS = get_class_set("CS3a")          # car, person, train
SIZE = 16


def _images(n, seed):
    """Images whose brightest channel is the class (a model that reads it is right)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0.2, 0.5, (n, SIZE, SIZE, 3))
    x[np.arange(n), :, :, y] += 0.3
    return x.astype(np.float32), y.astype(np.int64)


def _tiny_backbone(include_top=False, weights=None, input_shape=None, pooling="avg"):
    """A small conv backbone with named blocks (registered as a test architecture)."""
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1_out")(inp)
    x = keras.layers.MaxPooling2D(name="p1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c2_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, x, name="tiny")


@pytest.fixture(scope="module")
def tiny_m():
    """M of a test-only architecture ``tiny_cnn`` (with its tap table), trained on the
    brightest-channel task, in [0, 1] -> logits."""
    from models import classifier, taps

    mp = pytest.MonkeyPatch()
    mp.setitem(classifier.ARCHITECTURES, "tiny_cnn", classifier.Architecture(
        "tiny_cnn", _tiny_backbone, "tf", 8, False))
    mp.setitem(taps.TAPS, "tiny_cnn", taps.TapSpec(("c1_out",), "test"))
    # the toy classes differ by +0.3 in one channel: the trajectory detector's training attacks
    # need budgets beyond the paper's to succeed on it
    from defense.defenses import trajectory
    mp.setattr(trajectory, "TRAIN_ATTACKS", tuple(
        (g, n, eps * 16, t, dict(extra, steps=10) if n == "cw_l2" else extra)
        for g, n, eps, t, extra in trajectory.TRAIN_ATTACKS))
    m = classifier.build_classifier("tiny_cnn", 3, SIZE, seed=0)
    x, y = _images(300, 9)
    m.compile(keras.optimizers.Adam(learning_rate=0.01),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert np.mean(m.predict(x, verbose=0).argmax(1) == y) > 0.9
    yield m
    mp.undo()


def _other_model(x):
    return 10.0 * np.asarray(x, np.float32).mean(axis=(1, 2)) + np.array([0.1, 0.0, 0.0])


class _KeyExtractor:
    """Extractor stub: the true class's parts for even images, a wrong class's for odd ones."""
    kind = "oracle"

    def __init__(self, labels_by_key):
        self.labels_by_key = labels_by_key

    def extract(self, images, keys):
        out = []
        for k in keys:
            c = self.labels_by_key[k]
            idx = int(k.split("-")[-1])
            out.append(frozenset(CLASS_PARTS[CS.classes[c if idx % 2 == 0 else (c + 1) % 3]]))
        return out


def _image_set(name, split, x, y):
    return ImageSet(name=name, split=split, x=x, keys=["%s-%d" % (split, i) for i in range(len(y))],
                    labels=y, fingerprint={"name": name})


@pytest.fixture(scope="module")
def context(tiny_m, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("bench") / "m")
    sets = {split: _image_set("benign-" + split, split, *_images(n, seed))
            for split, n, seed in (("train", 40, 0), ("val", 24, 1), ("test", 18, 2))}
    labels = {k: int(c) for s in sets.values() for k, c in zip(s.keys, s.labels)}
    extractor = _KeyExtractor(labels)

    def attacked(model, attack, eps, split):
        base = sets[split]
        x = np.clip(base.x + np.where(base.x > 0.6, -eps / 255.0, eps / 255.0), 0, 1)
        return ImageSet(name="%s/%s-%s_%g" % (model, split, attack, eps), split=split,
                        x=x.astype(np.float32), keys=base.keys, labels=base.labels,
                        fingerprint={"attack": attack})

    def make(threshold=None, mode="flagged"):
        return FitContext(
            models={"m": tiny_m, "at": _other_model}, class_set=CS, seed=0,
            target_fpr=0.25, threshold=threshold, log=lambda s: None,
            images=lambda split: sets[split], attacked=attacked,
            observe=lambda d, images: d.observe(images),
            mode=mode, arch="tiny_cnn", m_dir=cache, m_digest="tiny",
            extractors=lambda k="standard": ("oracle", extractor, extractor, None),
            at=ATModel(eps=4, checkpoint_digest="x"))
    return make, sets, attacked, tiny_m


@pytest.mark.parametrize("name", sorted(DEFENSES) + ["unmask:k=robust", "unmask:k=robust:m=at",
                                                     "unmask:m=at:reject"])
def test_every_defense_names_a_surrogate_exactly_when_it_has_a_transfer_threat(name):
    """A transfer attack goes through a surrogate only where there is one, and the surrogate
    mirrors the part extractor the defense holds."""
    defense = build_defense(name)
    surrogate = defense.transfer_surrogate()
    assert (surrogate is not None) == (Threat.TRANSFER in defense.threats)
    if surrogate is not None:
        assert surrogate == ("robust" if "k=robust" in name else "standard")


def test_a_random_transforms_attack_records_name_how_its_eot_draws_are_seeded(tmp_path):
    """Adaptive records of the old counter-seeded EOT draws are not reused (their fingerprint
    lacks the field); the defense's own observations and every other defense's records keep
    their fingerprints."""
    from evaluation.store.adaptive_store import AdaptiveStore
    from evaluation.config import EvalConfig
    noise, jpeg = build_defense("noise:10"), build_defense("jpeg")
    assert noise.attacker_fingerprint() == {"eot_draws": "seeded per image by its iterate"}
    assert "eot_draws" not in json.dumps(noise.fingerprint())
    store = AdaptiveStore(EvalConfig(class_set=CS, defenses=("noise", "jpeg")), None, {},
                          lambda split: None, str(tmp_path), lambda s: None)
    fps = {d.name: store._adaptive_fp(d, "pgd_linf", 8.0, Threat.ADAPTIVE, Goal.WRONG)
           for d in (noise, jpeg, build_defense("unmask"))}
    assert fps["noise"]["attacker"] == {"eot_draws": "seeded per image by its iterate"}
    assert "attacker" not in fps["jpeg"] and "attacker" not in fps["unmask"]


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defense_fits_and_predicts_labels_in_range(context, name):
    make, sets, attacked, _ = context
    defense = build_defense(name)
    defense.fit(make())
    for images in (sets["test"], attacked("m", "pgd_linf", 8.0, "test")):
        pred = defense.predict(images)
        assert pred.shape == (len(images),) and pred.dtype == np.int64
        assert np.all((pred >= 0) & (pred < 3) | (pred == REJECTED))
        assert np.array_equal(pred, defense.predict(images)), "same images, same answer"
        if defense.detector:
            score, flags = defense.score(images), defense.flag(images)
            assert score.shape == flags.shape == (len(images),)
            assert np.array_equal(flags, score >= defense.threshold)
        else:
            with pytest.raises(ValueError, match="not a detector"):
                defense.score(images)
    if name != "trajectory":
        # trajectory: its second fit reads the attacked training sets from the first fit's
        # cache and retrains the detector (~half this test's time); partly covered instead:
        # a repeated fit of the mlp variant (scores) by
        # test_trajectory_never_trains_on_test_images_and_follows_m (slow), the detector's
        # training by test_trajectory's test_detector_is_deterministic_self_contained...
        again = build_defense(name)
        again.fit(make())
        assert np.array_equal(again.predict(sets["test"]), defense.predict(sets["test"]))
    params = defense.params()
    assert json.loads(json.dumps(params)) == params, "params must be JSON-able"
    assert defense.attacked_model() == ("at" if name == "at" else "m")


def test_unmask_defense_is_algorithm_1(context):
    make, sets, _, m = context
    um = build_defense("unmask")
    um.fit(make(threshold=0.5))
    out = um.decide(um.observe(sets["test"]))
    idx = np.arange(len(sets["test"]))
    # even images: parts of the true class -> d = 0 for a right M, not flagged, kept
    right = m.predict(sets["test"].x, verbose=0).argmax(1) == sets["test"].labels
    assert np.all(out.score[(idx % 2 == 0) & right] == 0.0)
    # odd images carry another class's parts: flagged and rectified to that class
    odd = idx % 2 == 1
    assert np.all(out.flags[odd & right])
    assert np.array_equal(out.pred[odd & right], (sets["test"].labels[odd & right] + 1) % 3)
    assert um.params()["threshold"] == 0.5 and um.params()["extractor"] == "oracle"
    # unmask:reject flags the same images and rejects them instead of rectifying
    rej = build_defense("unmask:reject")
    rej.fit(make(threshold=0.5))
    r = rej.decide(rej.observe(sets["test"]))
    assert np.array_equal(r.flags, out.flags)
    assert np.all(r.pred[r.flags] == REJECTED)
    assert np.array_equal(r.pred[~r.flags], out.pred[~out.flags])


def test_unmask_confident_rectifies_only_to_a_class_the_parts_vouch_for(context):
    """``unmask:confident``: M's unflagged answer stands; a flagged image is rectified where
    the best class's own distance is below t, and rejected where it is not (a hand-made
    case, Algorithm 1 at t = 0.5 computed by hand)."""
    from defense.routes import UNMASK_ROUTES
    make, _, _, _ = context
    assert tuple(CS.classes) == ("car", "person", "train")
    plain, confident = build_defense("unmask"), build_defense("unmask:confident")
    for d in (plain, confident):
        d.fit(make(threshold=0.5))
    train = ["coach_back", "coach_front", "coach_left", "coach_right"]
    obs = {"pred": [0, 0, 0, 1, 0],
           "parts": [sorted(CLASS_PARTS["car"]),          # d(car) = 0: kept
                     sorted(CLASS_PARTS["train"]),        # flagged; train, d = 0: vouched
                     # flagged; best person J = 3/14 (train 1/10): d = 11/14 >= t
                     ["arm", "coach_top", "ear", "eye"],
                     # person: J(person) = 2/17, flagged; train J = 5/8, d = 3/8 < t
                     train + ["arm", "head"],
                     # flagged; train J = 4/8: d = 1/2, not below t
                     train + ["mirror"]]}
    a, b = plain.decide(obs), confident.decide(obs)
    np.testing.assert_array_equal(a.flags, [False, True, True, True, True])
    np.testing.assert_array_equal(b.flags, a.flags)
    np.testing.assert_array_equal(a.pred, [0, 2, 1, 2, 2])
    np.testing.assert_array_equal(b.pred, [0, 2, REJECTED, 2, REJECTED])
    # mode "all" re-classifies every image; an unflagged one's best class is at most as far
    # as M's, so only the flagged answers can be rejected -- the same answers here
    every = build_defense("unmask:confident")
    every.fit(make(threshold=0.5, mode="all"))
    assert every.params()["mode"] == "all"
    np.testing.assert_array_equal(every.decide(obs).pred, b.pred)
    assert confident.label == "unmask:confident"
    assert confident.adaptive_routes(Goal.WRONG) == UNMASK_ROUTES
    assert confident.adaptive_goals() == (Goal.WRONG, Goal.UNDETECTED)


def test_unmask_threshold_is_chosen_on_validation_for_the_target_fpr(context):
    make, sets, _, _ = context
    um = build_defense("unmask")
    um.fit(make())
    d = um.decide(um.observe(sets["val"])).score
    assert np.mean(d >= um.threshold) <= 0.25
    assert um.params()["threshold_source"] == "validation"


def test_noise_grid_follows_its_rule(context):
    make, _, _, _ = context
    noise = build_defense("noise")
    noise.fit(make())
    params = noise.params()
    grid = params["grid"]
    assert [r["amplitude"] for r in grid] == [0, 5, 10, 15, 20, 25, 30]
    eligible = [r for r in grid if r["eligible"]]
    best = max(r["adv_acc"] for r in eligible)
    chosen = min(r["amplitude"] for r in eligible if r["adv_acc"] == best)
    assert params["amplitude"] == chosen
    fixed = build_defense("noise:10")
    fixed.fit(make())
    assert fixed.params()["amplitude"] == 10 and "grid" not in fixed.params()


def test_defense_names_are_validated_before_any_work():
    with pytest.raises(ValueError, match="valid names: none, at, unmask, pca"):
        parse_defense("feature-denoiser")
    with pytest.raises(ValueError, match="given twice"):
        parse_defenses("none,unmask,none")
    with pytest.raises(ValueError, match="takes no parameter"):
        parse_defense("none:3")
    with pytest.raises(ValueError, match="rectify, reject, confident"):
        build_defense("unmask:3")
    with pytest.raises(ValueError, match="scale"):
        build_defense("downsample:abc")
    assert parse_defenses("None, downsample:0.75,downsample") == [
        "none", "downsample:0.75", "downsample"]


def test_robustness_ratio():
    assert robustness(0.5, 0.8) == pytest.approx(0.625)
    assert robustness(0.0, 0.9) == 0.0
    assert robustness(0.3, 0.0) is None          # undefined without clean accuracy
    # the seed's own figures: PCA 22.10 / 23.35
    assert robustness(0.2210, 0.2335) == pytest.approx(0.9465, abs=1e-4)


def _bench_metrics():
    rows = lambda acc, det: [{"attack": "pgd_linf", "eps": 8, "threat_model": "gray-box",
                              "acc": acc, "defended": acc + (.1 if det else 0), "evasion": 0.9 - acc,
                              "robustness": acc / 0.8, "auc": .9 if det else None,
                              "tpr": .8 if det else None, "fpr": .1 if det else None,
                              "n_attacked": 10, "n_successful": 9}]
    defenses = {"none": {"kind": "classifier", "attacked_model": "m", "params": {},
                         "benign": {"acc": 0.8}, "attacks": rows(0.1, False)},
                "unmask": {"kind": "detector", "attacked_model": "m",
                           "params": {"threshold": 0.5}, "benign": {"acc": 0.8},
                           "attacks": rows(0.7, True)}}
    entry = schema.attack_entry("pgd_linf", 8, 0.1, None, 0.7, 0.9, 0.8, 0.1, 10, 9)
    return schema.make_metrics("CS3a", "mobilenetv2_050", "oracle", 0.5, "flagged", 0,
                               {"acc_none": .8, "acc_at": None, "acc_um": .8}, [entry],
                               versions={}, defenses=defenses)


def test_bench_tables_and_figure(tmp_path):
    m = _bench_metrics()
    df = comparison_table.comparison_frame(m)
    assert list(df["defense"]) == ["none", "none", "unmask", "unmask"]
    assert df.loc[1, "robustness"] == pytest.approx(0.125)
    md = comparison_table.comparison_markdown(m)
    assert "| none" in md and ".10 (0.12)" in md and ".80 · 0.900 / .80" in md
    assert "macro-AUC (gray-box)" in md and "0.900" in md
    paths = writer.write_comparison(str(tmp_path), m)
    for p in paths.values():
        assert os.path.getsize(p) > 0
    assert open(paths["bench_csv"]).readline().strip() == ",".join(comparison_table.CSV_COLUMNS)


def test_metrics_with_defenses_validate_and_old_files_still_do():
    m = _bench_metrics()
    old = {k: v for k, v in m.items() if k != "defenses"}
    schema.validate_metrics(old)
    for key, value, message in (("auc", 0.5, "not a detector"),
                                ("threat_model", "black-box", "threat_model"),
                                ("eps", 16, "not among the run's attacks")):
        bad = json.loads(json.dumps(m))
        bad["defenses"]["none"]["attacks"][0][key] = value
        with pytest.raises(ValueError, match=message):
            schema.validate_metrics(bad)
    # without UnMask the Table IV fields of UnMask are null, everywhere
    no_um = json.loads(json.dumps(old))
    no_um.update(extractor=None, threshold=None)
    no_um["benign"]["acc_um"] = None
    no_um["attacks"][0].update(acc_um=None, auc=None, tpr=None, fpr=None)
    schema.validate_metrics(no_um)
    no_um["attacks"][0]["auc"] = 0.9
    with pytest.raises(ValueError, match="UnMask was not run"):
        schema.validate_metrics(no_um)


@pytest.mark.slow
def test_trajectory_never_trains_on_test_images_and_follows_m(context, monkeypatch):
    """The detector's training attacks see only training/validation images; its cached
    representatives are recomputed when M's weights change."""
    from defense.defenses import trajectory

    make, sets, _, _ = context
    attacked = []
    real = trajectory.run_attack
    monkeypatch.setattr(trajectory, "run_attack", lambda m, x, y, name, **kw: (
        attacked.append(np.asarray(x)), real(m, x, y, name, **kw))[1])
    logs = []
    ctx = make()
    ctx.log = logs.append
    ctx.m_digest = "another M"
    d = build_defense("trajectory:centroid-l2-mlp")
    d.fit(ctx)
    assert any("representatives from" in m for m in logs), "a new M needs new representatives"
    assert attacked, "the training data comes from attacks"
    test_rows = {sets["test"].x[i].tobytes() for i in range(len(sets["test"]))}
    train_val = {s.x[i].tobytes() for s in (sets["train"], sets["val"]) for i in range(len(s))}
    for x in attacked:
        rows = {r.tobytes() for r in x}
        assert not rows & test_rows and rows <= train_val
    p = d.params()
    assert (p["representative"], p["metric"], p["detector"]) == ("centroid", "l2", "mlp")
    assert 0 <= p["threshold"] <= 1 and p["n_train"] > 0 and p["n_val"] > 0
    # the same M again: representatives and training features come from the cache
    logs.clear()
    attacked.clear()
    again = build_defense("trajectory:centroid-l2-mlp")
    again.fit(ctx)
    assert not attacked and not any("representatives from" in m for m in logs)
    assert np.array_equal(again.score(sets["test"]), d.score(sets["test"]))


def test_trajectory_options_and_held_out_family():
    from defense.defenses.trajectory import TRAIN_ATTACKS, TrajectoryDefense

    d = TrajectoryDefense(None)
    assert (d.options.representative, d.options.metric, d.options.detector) == (
        "medoid", "cosine", "lstm")
    held = TrajectoryDefense("nomifgsm")
    assert [a[0] for a in held._attacks()] == [a[0] for a in TRAIN_ATTACKS
                                               if not a[0].startswith("mifgsm")]
    assert len(TRAIN_ATTACKS) == 8 and {a[3] for a in TRAIN_ATTACKS} == {True, False}
    with pytest.raises(ValueError, match="unknown token 'median'"):
        TrajectoryDefense("median-cosine")


def test_family_aucs_on_hand_made_scores():
    from defense.defenses.trajectory import TRAIN_ATTACKS
    from evaluation.report.trajectory_table import family_aucs

    gid = {a[0]: g for g, a in enumerate(TRAIN_ATTACKS, start=1)}
    groups = np.array([0, 0, 0, 0, gid["bim_linf-u"], gid["bim_l2-u"], gid["cw_l2-u"],
                       gid["cw_l2-u"], gid["mifgsm-t"]])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.35, 0.25, 0.05, 0.8])
    untargeted = family_aucs(scores, groups, targeted=False)
    assert untargeted["BIM"] == pytest.approx((4 + 3) / 8)   # 0.9 beats 4, 0.35 beats 3
    assert untargeted["CW"] == pytest.approx((2 + 0) / 8)    # 0.25 beats 0.1 and 0.2
    assert untargeted["MI-FGSM"] is None                      # only a targeted MI-FGSM sample
    assert untargeted["macro"] == pytest.approx(np.mean([7 / 8, 2 / 8]))
    targeted = family_aucs(scores, groups, targeted=True)
    assert targeted["MI-FGSM"] == 1.0 and targeted["BIM"] is None


@pytest.mark.slow
def test_seed_table_has_the_four_configurations(context):
    from evaluation.report import trajectory_table

    make, sets, _, _ = context
    table = trajectory_table.seed_table(make(), sets["test"], log=lambda s: None)
    assert list(table) == ["centroid-l2", "centroid-cosine", "medoid-l2", "medoid-cosine"]
    for kinds in table.values():
        for kind in ("targeted", "untargeted"):
            vals = [v for v in kinds[kind].values() if v is not None]
            assert vals and all(0.0 <= v <= 1.0 for v in vals)
    md = trajectory_table.table_markdown(table)
    assert "LSTM + M + cos" in md and "untargeted macro-AUC" in md


# ----------------------------------------------------------------------------- adaptive

def _engine(target, x, y, name, eps, steps, restarts=1, **params):
    """The adaptive engine's result for attack ``name`` at ``eps`` (0-255 scale)."""
    from attacks import resolve_config
    from attacks.engine import AdaptiveEngine, EngineSettings
    engine = AdaptiveEngine(resolve_config(name, eps, **params), target,
                            EngineSettings(steps=steps, restarts=restarts), seed=0)
    return engine.run(x, y, slots=len(x))


def test_adaptive_success_rises_with_eps_and_steps_and_nears_all(tiny_m):
    """Tramer et al.'s sanity checks on a small model, through the engine."""
    from attacks.target import ModelTarget

    x, y = _images(40, 5)
    x = (np.round(x * 255) / 255).astype(np.float32)

    def rate(eps, steps):
        return float(_engine(ModelTarget(tiny_m), x, y, "pgd_linf", eps, steps,
                             step_size=max(eps / 8, 1)).success.mean())

    by_eps = [rate(e, 10) for e in (4, 32, 128)]
    assert by_eps == sorted(by_eps) and by_eps[-1] >= 0.95
    assert rate(32, 2) <= rate(32, 20)


def test_eot_averages_over_the_given_number_of_samples(tiny_m):
    from attacks.losses import cross_entropy
    from defense import adaptive
    from defense.transforms import get_transform

    calls = []

    class Counting:
        randomized = True
        inner = get_transform("noise", amplitude=8)

        def bpda(self, x, seed=0):
            calls.append((int(x.shape[0]), seed))
            return self.inner.bpda(x, seed=seed)

    x, y = _images(3, 4)
    target = adaptive.TransformTarget(tiny_m, Counting(), lambda z, yy: np.zeros(len(z), bool),
                                      samples=7, seed=5)
    out = target.evaluate(tf.constant(x), tf.constant(y), None, cross_entropy)
    assert [c[0] for c in calls] == [7, 7, 7], "7 draws per image"
    seeds = [c[1] for c in calls]
    assert len(set(seeds)) == 3, "each image its own draws"
    assert seeds == [adaptive.iterate_seed(5, x[i]) for i in range(3)]
    moved = x.copy()
    moved[1] += np.float32(1 / 255)
    again = target.evaluate(tf.constant(moved), tf.constant(y), None, cross_entropy)
    assert [c[1] for c in calls[3:]] == [seeds[0], adaptive.iterate_seed(5, moved[1]),
                                         seeds[2]], "fresh (seeded) draws at a new iterate only"
    assert out.loss.shape == (3,) and out.grad.shape == x.shape
    assert np.all(np.isfinite(out.grad)) and not np.array_equal(out.grad[1], again.grad[1])
    # an image's draws are a function of its iterate, not of how many evaluations came
    # before nor of the images beside it: a resumed attack (a fresh target), or the image
    # evaluated alone, meets the same draws
    alone = adaptive.TransformTarget(tiny_m, Counting(), lambda z, yy: np.zeros(len(z), bool),
                                     samples=7, seed=5)
    same = alone.evaluate(tf.constant(moved[1:2]), tf.constant(y[1:2]), None, cross_entropy)
    np.testing.assert_allclose(same.grad.numpy()[0], again.grad.numpy()[1], atol=1e-6)
    # the loss is the mean over the draws of each draw's loss
    noisy = np.concatenate([Counting.inner(np.repeat(x[i:i + 1], 7, axis=0), seed=seeds[i])
                            for i in range(3)])
    per_draw = cross_entropy(tiny_m(noisy, training=False), tf.repeat(y, 7), None).numpy()
    np.testing.assert_allclose(out.loss.numpy(), per_draw.reshape(3, 7).mean(1), rtol=1e-5)
    with pytest.raises(ValueError, match="at least one sample"):
        adaptive.TransformTarget(tiny_m, Counting(), None, samples=0)


def test_a_random_transforms_targets_do_not_depend_on_the_images_beside_it(tiny_m):
    """The adaptive engine ranks target classes once per batch of images: through a random
    transform each image's draw is its own (seeded by the image), so its targets are the same
    in any batch."""
    from defense import adaptive
    from defense.transforms import get_transform

    x, y = _images(6, 4)
    target = adaptive.TransformTarget(tiny_m, get_transform("noise", amplitude=30),
                                      lambda z, yy: np.zeros(len(z), bool), seed=3)
    together = np.asarray(target.ranked_targets(tf.constant(x), tf.constant(y)))
    for i in range(len(x)):
        alone = np.asarray(target.ranked_targets(tf.constant(x[i:i + 1]),
                                                 tf.constant(y[i:i + 1])))
        np.testing.assert_array_equal(alone[0], together[i])


def _smooth_vs_checkerboard_task(seed=0, n=200):
    """Images 0.5 + a*p1 + b*p2 (smooth patterns) + tiny noise; the class is sign(a).  M is
    linear: z1 = u.(x - 0.5) with u = p1 + 40 c, c a unit checkerboard.  M is right on clean
    images (they have no checkerboard), its gradient is almost all checkerboard -- which
    down-sampling and PCA remove -- so the gray-box attack is undone by the transform while
    BPDA, differentiating through it, attacks p1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    p1 = np.repeat((xx + 0.5 * yy)[..., None], 3, axis=2)
    p2 = np.repeat((yy * yy - 0.3)[..., None], 3, axis=2)
    c = np.repeat((((np.arange(SIZE)[:, None] + np.arange(SIZE)[None, :]) % 2) * 2 - 1.0)
                  [..., None], 3, axis=2)
    p1, p2, c = (v / np.linalg.norm(v) for v in (p1, p2, c))
    a = rng.choice([-1, 1], n) * rng.uniform(0.5, 1.0, n)
    b = rng.uniform(-1, 1, n)
    x = 0.5 + 2.0 * (a[:, None, None, None] * p1 + b[:, None, None, None] * p2)
    x = np.round(np.clip(x, 0, 1) * 255) / 255
    y = (a > 0).astype(np.int64)
    u = (p1 + 40 * c).reshape(-1)
    inp = keras.Input((SIZE, SIZE, 3))
    flat = keras.layers.Flatten()(keras.layers.Lambda(lambda t: t - 0.5)(inp))
    dense = keras.layers.Dense(2, use_bias=False)
    model = keras.Model(inp, dense(flat))
    dense.set_weights([np.stack([np.zeros_like(u), u], axis=1).astype(np.float32)])
    return x.astype(np.float32), y, model


def _adaptive_target(d):
    from defense.base import AdaptiveOptions
    from defense.threats import Goal, Threat
    return d.attack_target(Threat.ADAPTIVE, Goal.WRONG, AdaptiveOptions())


def test_the_white_box_target_compiles_its_pass_and_gives_the_models_answer(tiny_m):
    """The engine calls the target eagerly: WhiteBoxTarget compiles the model's pass once per
    loss (targeted or not) and gives ModelTarget's loss, direction and verdict."""
    from attacks.losses import cross_entropy
    from attacks.target import ModelTarget
    from defense.defenses.classifier import WhiteBoxTarget

    x, y = _images(6, 3)
    x, y = tf.constant(x), tf.constant(y)
    t = tf.constant((y.numpy() + 1) % 3)
    white = WhiteBoxTarget(tiny_m)
    for target in (None, t, None, t):
        want = ModelTarget(tiny_m).evaluate(x, y, target, cross_entropy)
        got = white.evaluate(x, y, target, cross_entropy)
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got.grad, want.grad, rtol=1e-3, atol=1e-6)
        np.testing.assert_array_equal(got.success, want.success)
    assert len(white._steps) == 2, "one compiled pass per loss and targeting"


@pytest.mark.parametrize("name,model", [("none", "m"), ("at", "at")])
def test_a_classifiers_adaptive_attack_is_the_white_box_attack_run_by_the_engine(context, name,
                                                                                  model):
    """``none`` and ``at`` are one classifier's answer: their defense-aware attacker runs the
    same white-box attack through the engine (so they face the compared rows' attack
    strength), on the classifier the gray-box attacker sees; its verdict is the defense's."""
    from defense.base import AdaptiveOptions

    make, sets, _, _ = context
    ctx = make()
    # the AT stand-in, differentiable (the context's numpy one serves observations only)
    ctx.models["at"] = lambda x: 10.0 * tf.reduce_mean(x, axis=(1, 2)) + tf.constant(
        [0.1, 0.0, 0.0])
    d = build_defense(name)
    d.fit(ctx)
    assert Threat.ADAPTIVE in d.threats and d.no_adaptive_reason(Threat.ADAPTIVE) is None
    assert d.adaptive_routes(Goal.WRONG) == ("white-box",)
    assert d.attack_target(Threat.GRAY_BOX, Goal.WRONG, AdaptiveOptions()) is None
    target = _adaptive_target(d)
    test = sets["test"]
    x = (np.round(test.x * 255) / 255).astype(np.float32)
    res = _engine(target, x, test.labels, "pgd_linf", 64, 10, step_size=16)
    np.testing.assert_array_equal(res.success, d.wrong_answers(res.x_adv, test.labels))
    logits = np.asarray(ctx.models[model](tf.constant(res.x_adv)))
    np.testing.assert_array_equal(res.success, logits.argmax(axis=1) != test.labels)
    assert np.abs(res.x_adv - x).max() <= 64 / 255 + 1e-6
    assert res.success.mean() > 0.5, "a white-box attack at this budget fools the classifier"


@pytest.mark.parametrize("name", ["downsample:0.5", "pca"])
def test_bpda_through_a_linear_transform_beats_the_gray_box_attack(context, name):
    from attacks import run_attack

    make, _, _, _ = context
    x, y, model = _smooth_vs_checkerboard_task()
    train = _image_set("benign-train", "train", x[:150], y[:150])
    test = _image_set("benign-test", "test", x[150:], y[150:])
    ctx = make()
    ctx.models["m"] = model
    ctx._images = lambda split: train if split == "train" else test
    d = build_defense(name)
    d.fit(ctx)
    assert np.mean(d.predict(test) == test.labels) == 1.0
    gray = run_attack(model, test.x, test.labels, "pgd_linf", eps=32, steps=10, seed=0)
    assert gray.adv_accuracy == 0.0, "the gray-box attack fools M itself"
    gray_acc = np.mean(d.predict(_image_set("g", "test", gray.x_adv, test.labels))
                       == test.labels)
    res = _engine(_adaptive_target(d), test.x, test.labels, "pgd_linf", 32, 10, step_size=8)
    adaptive_acc = np.mean(d.predict(_image_set("a", "test", res.x_adv, test.labels))
                           == test.labels)
    np.testing.assert_array_equal(res.success, d.wrong_answers(res.x_adv, test.labels))
    assert gray_acc >= 0.9, "the transform undoes the gray-box perturbation"
    assert adaptive_acc <= 0.1, "BPDA breaks it"


@pytest.mark.parametrize("name", ["jpeg:30", "bitdepth:2", "noise:16"])
def test_bpda_and_eot_on_the_other_transforms(context, name):
    """Straight-through BPDA (jpeg, bitdepth) and EOT (noise) through the engine: at least as
    strong as the gray-box attack on the toy at a budget that breaks M."""
    from attacks import run_attack

    make, sets, _, m = context
    d = build_defense(name)
    d.fit(make())
    test = sets["test"]
    x = (np.round(test.x * 255) / 255).astype(np.float32)
    res = _engine(_adaptive_target(d), x, test.labels, "pgd_linf", 40, 12,
                  step_size=40 / 6)
    gray = run_attack(m, x, test.labels, "pgd_linf", eps=40, steps=12, step_size=40 / 6,
                      seed=0)
    gray_acc = np.mean(d.predict(_image_set("g", "test", gray.x_adv, test.labels))
                       == test.labels)
    adaptive_acc = np.mean(d.predict(_image_set("a", "test", res.x_adv, test.labels))
                           == test.labels)
    # within two images: at this budget the gray-box attack already breaks M (accuracy ~0),
    # and a random defense's answer moves an image or two between draws
    assert adaptive_acc <= gray_acc + 2 / len(x) and adaptive_acc < 0.5


@pytest.mark.slow
def test_joint_attack_on_the_trajectory_detector_evades_more_than_gray_box(context):
    from attacks import run_attack

    make, sets, _, m = context
    d = build_defense("trajectory:centroid-l2-mlp")
    d.fit(make())
    test = sets["test"]
    x = (np.round(test.x * 255) / 255).astype(np.float32)
    y = test.labels

    def evasion(z):
        out = d.decide(d.observe(_image_set("e", "test", z, y)))
        fooled = m.predict(z, verbose=0).argmax(1) != y
        return fooled & ~out.flags

    gray = run_attack(m, x, y, "pgd_linf", eps=96, steps=20, step_size=8, seed=0)
    res = _engine(_adaptive_target(d), x, y, "pgd_linf", 96, 20, step_size=8)
    np.testing.assert_array_equal(res.success, evasion(res.x_adv))
    assert evasion(res.x_adv).mean() >= evasion(gray.x_adv).mean()
    assert evasion(res.x_adv).mean() > 0


def test_sanity_checks_flag_broken_attacks():
    m = _bench_metrics()
    rows = m["defenses"]["unmask"]["attacks"]
    base = dict(rows[0])                       # gray-box: defended .8, evasion .2, 9 of 10 fooled
    rows.append(dict(base, threat_model="adaptive", goal="wrong", defended=.5, evasion=.05))
    checks = comparison_table.sanity_checks(m)
    # without the undetected goal the adaptive run is compared on wrong answers (.5 vs .2),
    # whatever its evasion (a rectifying detector's wrong answers need not evade)
    assert checks and all(ok for ok, _ in checks), checks
    assert any("adaptive wrong answers 0.50 vs gray-box 0.20" in msg for _, msg in checks)
    rows[-1]["defended"] = .9                  # adaptive weaker than gray-box
    bad = [msg for ok, msg in comparison_table.sanity_checks(m) if not ok]
    assert len(bad) == 1 and "adaptive wrong answers 0.10" in bad[0]
    assert "FAILED" in comparison_table.sanity_text(m)
    rows[-1]["defended"] = .5
    # with the undetected goal: evasion against evasion
    rows.append(dict(base, threat_model="adaptive", goal="undetected", evasion=.1))
    bad = [msg for ok, msg in comparison_table.sanity_checks(m) if not ok]
    assert len(bad) == 1 and "adaptive evasion 0.10 vs gray-box 0.20" in bad[0]
    rows[-1]["evasion"] = .6
    # success at the attacker's own goal falls with a larger eps: flagged; a gray-box attack
    # on a detector aims at M, so its evasion falling is not (M fooled is what counts)
    rows.append(dict(base, eps=16, evasion=base["evasion"] - 0.15))
    assert all(ok for ok, _ in comparison_table.sanity_checks(m))
    rows[-1]["n_successful"] = 5
    bad = [msg for ok, msg in comparison_table.sanity_checks(m) if not ok]
    assert len(bad) == 1 and "[gray-box]: success 0.90 at eps 8 -> 0.50 at eps 16" in bad[0]
    rows.append(dict(rows[-3], eps=16, defended=.8))       # adaptive wrong: .5 -> .2
    bad = [msg for ok, msg in comparison_table.sanity_checks(m) if not ok]
    assert any("[adaptive, wrong]: success 0.50 at eps 8 -> 0.20 at eps 16" in msg
               for msg in bad), bad


def test_sanity_checks_ask_an_attack_that_knows_the_defense_to_win_at_a_large_budget():
    """SPEC §8: success approaches 100% at a large eps -- checked on the defense-aware rows
    and a classifier's white-box rows at L∞ eps >= 64; not on a detector's gray-box row (that
    attacker does not know the detector), nor on an L2 attack or a smaller budget."""
    m = _bench_metrics()
    um, clf = m["defenses"]["unmask"]["attacks"], m["defenses"]["none"]["attacks"]
    base = dict(um[0])
    um.append(dict(base, eps=64, evasion=.95, defended=.6))      # gray-box on a detector
    um.append(dict(base, eps=64, threat_model="adaptive", goal="wrong", defended=.04,
                   evasion=.5))
    um.append(dict(base, eps=64, threat_model="adaptive", goal="undetected", defended=.5,
                   evasion=.97))
    clf.append(dict(clf[0], eps=64, defended=.02, evasion=.98))
    large = [(ok, msg) for ok, msg in comparison_table.sanity_checks(m)
             if "large budget" in msg]
    assert [ok for ok, _ in large] == [True, True, True], large
    assert any("[adaptive, wrong]: success 0.96" in msg for _, msg in large)
    assert any("[adaptive, undetected]: success 0.97" in msg for _, msg in large)
    # an attack that fails at eps 64 fails the check, with the numbers in the message
    um[-2]["defended"] = .45
    bad = [msg for ok, msg in comparison_table.sanity_checks(m) if not ok]
    assert len(bad) == 1 and "unmask, pgd_linf eps 64 [adaptive, wrong]: success 0.55" in bad[0]
    assert "FAILED" in comparison_table.sanity_text(m)
    # an L2 attack, a one-step or universal attack, or a smaller budget is not asked
    um[-2].update(attack="pgd_l2")
    um.append(dict(base, eps=32, threat_model="adaptive", goal="wrong", defended=.9))
    clf += [dict(clf[0], attack=name, eps=64, defended=.7) for name in ("fgsm", "uap")]
    large = [msg for _, msg in comparison_table.sanity_checks(m) if "large budget" in msg]
    assert len(large) == 2 and not any("pgd_l2" in msg or "eps 32" in msg or "fgsm" in msg
                                       or "uap" in msg for msg in large), large
    assert all(ok for ok, msg in comparison_table.sanity_checks(m) if "large budget" in msg)


def test_a_defense_whose_one_run_serves_both_goals_keeps_it_whatever_goal_is_chosen():
    """--adaptive-goals narrows a rectifying UnMask's two runs; a classifier's or a rejecting
    detector's one run serves both goals and is kept (it is never left without its attack)."""
    from evaluation.results import chosen_goals
    unmask = build_defense("unmask")
    assert chosen_goals(unmask, None) == ((Goal.WRONG, Goal.UNDETECTED), [])
    assert chosen_goals(unmask, ("wrong",)) == ((Goal.WRONG,), ["undetected"])
    assert chosen_goals(unmask, ("undetected",)) == ((Goal.UNDETECTED,), ["wrong"])
    for label in ("none", "at", "unmask:reject", "pca"):
        d = build_defense(label)
        assert chosen_goals(d, ("undetected",)) == ((Goal.WRONG,), []), label


# ----------------------------------------------------------------------------- hardened UnMask
def test_unmask_parameters_parse_to_one_canonical_label_and_name_bad_values():
    assert parse_defenses("unmask:m=at:k=robust,unmask:k=robust,unmask:reject:m=at,"
                          "unmask:k=standard:m=m:rectify") == [
        "unmask:k=robust:m=at", "unmask:k=robust", "unmask:reject:m=at", "unmask"]
    variant = build_defense("unmask:k=robust:m=at")
    assert (variant.k, variant.m_key, variant.response) == ("robust", "at", "rectify")
    assert variant.attacked_model() == "at" and variant.models_needed() == ("at",)
    assert build_defense("unmask").models_needed() == ("m",)
    # the transfer attacker's surrogate mirrors the K the variant holds
    assert variant.transfer_surrogate() == "robust"
    assert build_defense("unmask:m=at").transfer_surrogate() == "standard"
    for text, message in (("unmask:k=robus", "k must be one of standard, robust"),
                          ("unmask:cheap=1", "unknown parameter 'cheap'"),
                          ("unmask:m=at:m=m", "m is given twice"),
                          ("unmask,unmask:k=standard", "unmask is given twice")):
        with pytest.raises(ValueError, match=message):
            parse_defenses(text)


def test_unmask_variants_build_their_own_models_threshold_and_observations(tiny_m, context):
    """k=robust asks the context for the robust extractor, m=at holds the AT model (its
    predictions are read from the image set under "at", its gray-box attacker attacks it), and
    each variant chooses its own threshold on validation: the same as a plain UnMask given
    those models."""
    make, sets, _, _ = context
    labels = {k: int(c) for s in sets.values() for k, c in zip(s.keys, s.labels)}
    standard, robust = _KeyExtractor(labels), _KeyExtractor(labels)
    robust.extract = lambda images, keys: [frozenset(CLASS_PARTS[CS.classes[labels[k]]])
                                           for k in keys]     # a K that is always right
    asked = []

    def extractors(k="standard"):
        asked.append(k)
        return ("k", standard, standard, "std") if k == "standard" else \
            ("k", robust, robust, "rob")

    def ctx(models):
        base = make()
        return FitContext(models=models, class_set=CS, seed=0, target_fpr=0.25, threshold=None,
                          log=lambda s: None, images=base.images, attacked=base.attacked,
                          observe=lambda d, images: d.observe(images), mode="flagged",
                          extractors=extractors, at=ATModel(eps=4, checkpoint_digest="at1"))

    both = build_defense("unmask:k=robust:m=at")
    both.fit(ctx({"m": tiny_m, "at": _other_model}))
    assert asked == ["robust"] and both._m is _other_model
    assert both.params()["k"] == "robust" and both.params()["m"] == "at"
    test = sets["test"]
    given = ImageSet(name="x", split="test", x=test.x, keys=test.keys, labels=test.labels,
                     preds={"m": np.zeros(len(test), np.int64),
                            "at": np.ones(len(test), np.int64)})
    assert both.observe(given)["pred"] == [1] * len(test)      # the AT model's answers
    # its own threshold: chosen on validation from the AT model's answers and the robust parts
    from defense.thresholds import choose_threshold
    from defense.unmask import UnMask
    val = sets["val"]
    um = UnMask(_other_model, robust, CLASS_PARTS, CS.classes, threshold=0.5)
    distances = um.decide(um.predict(val.x), um.extract(val.x, keys=list(val.keys))).distances
    assert both.threshold == pytest.approx(choose_threshold(distances, 0.25).threshold)
    asked.clear()
    plain = build_defense("unmask")
    plain.fit(ctx({"m": tiny_m}))
    assert asked == ["standard"] and plain._m is tiny_m and plain.attacked_model() == "m"
    plain_fp, at_fp = plain.fingerprint(), both.fingerprint()
    assert at_fp["m"] == ["at", "at1"] and at_fp["k"] == "rob"
    assert "m" not in plain_fp and plain_fp["k"] == "std"
    assert "k" not in plain.params() and "m" not in plain.params()
    with pytest.raises(ValueError, match="unmask:m=at needs the adversarially trained "
                                         "classifier: run with --adv-train"):
        build_defense("unmask:m=at").fit(ctx({"m": tiny_m}))


def test_an_unmask_holding_the_at_model_makes_the_run_train_it():
    from evaluation.config import EvalConfig
    cfg = EvalConfig(class_set=CS, defenses=("none", "unmask:k=robust:m=at"))
    assert cfg.adv_train and "at" not in cfg.defenses
    assert not EvalConfig(class_set=CS, defenses=("none", "unmask:k=robust")).adv_train


class _MeanScorer:
    """A K stand-in: its part loss of an image is the image's mean pixel (gradient: the
    constant 1 / pixels), its part set the first part when the mean is above 0.3."""
    part_names = ("wheel", "window", "head")
    num_parts = 3

    def __init__(self):
        self.batches = []

    def hinge_value_and_grad(self, images, present, absent, return_parts=False, **hinge):
        images = np.asarray(images, np.float32)
        self.batches.append(len(images))
        loss = images.mean(axis=(1, 2, 3))
        grad = np.full(images.shape, 1.0 / images[0].size, np.float32)
        parts = [frozenset(["wheel"]) if v > 0.3 else frozenset() for v in loss]
        return loss, grad, parts

    def detected_parts(self, images):
        return [frozenset()] * len(images)


def test_eot_over_the_randomized_k_input_averages_the_given_number_of_draws():
    """unmask:input=random's adaptive target: each evaluation runs K once on B x samples
    draws of the resize-and-pad; its part loss and gradient are the means over each image's
    draws (through each draw's adjoint), its verdict the majority of the draws' verdicts; the
    draws are fresh for a new iterate and the same for the same iterate (a resumed attack
    meets the draws of the uninterrupted one)."""
    from attacks.losses import get_loss
    from defense.adaptive import RandomizedUnMaskTarget, combine, iterate_seed
    from defense.transforms import ResizePadTransform

    transform = ResizePadTransform(0.5)
    scorer = _MeanScorer()
    model = keras.Sequential([keras.layers.Flatten(input_shape=(8, 8, 3)),
                              keras.layers.Dense(3)])
    parts = [("wheel",), ("window",), ("head",)]
    votes = []

    def judge(pred, part_sets, y):
        votes.append(len(pred))
        return np.array([bool(p) for p in part_sets])

    rng = np.random.default_rng(0)
    x = rng.uniform(0.25, 0.4, (2, 8, 8, 3)).astype(np.float32)
    y, t = np.array([0, 1]), np.array([1, 2])
    loss_fn = get_loss("ce")
    for samples in (1, 20):
        target = RandomizedUnMaskTarget(model, scorer, parts, judge, transform,
                                        samples=samples, seed=5)
        first = target.evaluate(x, y, t, loss_fn)
        assert scorer.batches[-1] == 2 * samples and votes[-1] == 2 * samples
        seeds = [iterate_seed(target.seed, x[i]) for i in range(2)]   # each image its own
        stacked = np.repeat(x, samples, axis=0)          # image i's draws: rows i*s .. i*s+s-1
        draws = np.concatenate([transform(stacked[i * samples:(i + 1) * samples], seed=sd)
                                for i, sd in enumerate(seeds)])
        per_draw = draws.mean(axis=(1, 2, 3)).reshape(2, samples)
        m_loss = loss_fn(model(x), y, t).numpy()
        np.testing.assert_allclose(first.loss.numpy(), m_loss - per_draw.mean(axis=1),
                                   rtol=1e-5)
        ones = np.full((samples,) + x.shape[1:], 1.0 / x[0].size, np.float32)
        k_grad = np.concatenate([transform.estimate_gradient(
            stacked[i * samples:(i + 1) * samples], ones, seed=sd)
            for i, sd in enumerate(seeds)])
        k_grad = k_grad.reshape((2, samples) + x.shape[1:]).mean(axis=1)
        with tf.GradientTape() as tape:
            xt = tf.constant(x)
            tape.watch(xt)
            logits = model(xt)
            m_obj = loss_fn(logits, y, t)
        wants = tf.equal(tf.argmax(logits, axis=1), tf.constant(t, tf.int64))
        expected = combine(tape.gradient(m_obj, xt), -tf.constant(k_grad), wants, "two-phase")
        np.testing.assert_allclose(first.grad.numpy(), expected.numpy(), atol=1e-5)
        majority = (per_draw > 0.3).mean(axis=1) >= 0.5
        np.testing.assert_array_equal(first.success.numpy(), majority)
        again = target.evaluate(x, y, t, loss_fn)            # the same iterate: the same draws
        np.testing.assert_array_equal(again.loss.numpy(), first.loss.numpy())
        new_seed = iterate_seed(target.seed, x[0] + np.float32(1 / 255))  # a new iterate
        assert new_seed != seeds[0]
        if samples > 1:
            assert not np.array_equal(transform.draws(samples, 8, 8, new_seed),
                                      transform.draws(samples, 8, 8, seeds[0]))
        alone = target.evaluate(x[1:], y[1:], t[1:], loss_fn)   # the same draws for image 1
        np.testing.assert_allclose(alone.loss.numpy(), first.loss.numpy()[1:], rtol=1e-5)
    with pytest.raises(ValueError, match="samples .EOT draws per step. must be >= 1"):
        RandomizedUnMaskTarget(model, scorer, parts, judge, transform, samples=0)


def test_unmask_random_input_shows_k_one_seeded_draw_per_image_set(context):
    make, sets, _, _ = context
    seen = []

    class Recorder(_KeyExtractor):
        def extract(self, images, keys):
            seen.append(np.array(images))
            return super().extract(images, keys)

    labels = {k: int(c) for s in sets.values() for k, c in zip(s.keys, s.labels)}
    base = make()
    ctx = FitContext(models=base.models, class_set=CS, seed=0, target_fpr=0.25, threshold=None,
                     log=lambda s: None, images=base.images, attacked=base.attacked,
                     observe=lambda d, images: d.observe(images), mode="flagged",
                     extractors=lambda k="standard": ("k", Recorder(labels), Recorder(labels), "d"))
    d = build_defense("unmask:input=random")
    d.fit(ctx)
    test = sets["test"]
    d.observe(test)
    d.observe(test)
    assert not np.array_equal(seen[-1], test.x)                 # K saw a transformed image
    np.testing.assert_array_equal(seen[-1], seen[-2])           # the same set, the same draw
    assert d.params()["input"] == "random" and d.fingerprint()["input"]["name"] == "resizepad"

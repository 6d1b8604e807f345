"""UnMask core: Jaccard, Algorithm 1, UnMask.protect, oracle extractor, thresholds, ROC/AUC."""
import itertools
import json

import numpy as np
import pytest

from data.knowledge import CLASS_PARTS, get_class_set
from defense import thresholds
from evaluation import metrics
from defense.extractors import OracleExtractor, coco_parts_by_file
from defense.unmask import (NO_CLASS, Mode, UnMask, algorithm1, as_mode, best_class, detect,
                            distances, jaccard, jaccard_distance, rectify,
                            scores)

# Toy class-feature map, index order = M's outputs.
V = [frozenset({"a", "b", "c"}), frozenset({"c", "d"}), frozenset({"e"})]


# ----------------------------------------------------------------------------- Jaccard

def test_jaccard_definition_and_edge_cases():
    assert jaccard(set(), set()) == 0.0
    assert jaccard({"a"}, set()) == 0.0
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard({"x"}, {"x"}) == 1.0
    assert jaccard(["a", "a", "b"], ("b", "a")) == 1.0  # duplicates collapse


def test_jaccard_properties_random():
    rng = np.random.default_rng(0)
    universe = list("abcdefgh")
    for _ in range(200):
        a = set(rng.choice(universe, rng.integers(0, 6)))
        b = set(rng.choice(universe, rng.integers(0, 6)))
        j = jaccard(a, b)
        assert 0.0 <= j <= 1.0
        assert j == jaccard(b, a)
        assert (j == 1.0) == (a == b and len(a) > 0)
        assert (j == 0.0) == (len(a & b) == 0)


# ----------------------------------------------------------------------------- Algorithm 1

def test_scores_and_distances_match_jaccard_of_predicted_class():
    parts = [{"a", "b"}, {"c", "d"}, set(), {"e", "z"}]
    preds = [0, 0, 1, 2]
    s = scores(parts, preds, V)
    expected = [jaccard(p, V[c]) for p, c in zip(parts, preds)]
    np.testing.assert_allclose(s, expected)
    np.testing.assert_allclose(distances(parts, preds, V), 1.0 - np.array(expected))
    assert s.dtype == np.float64 and s.shape == (4,)


def test_detection_boundary_d_equal_t_is_flagged():
    # parts {a, b} vs V[0] = {a, b, c}: s = 2/3, d = 1/3.
    d = distances([{"a", "b"}], [0], V)[0]
    assert detect([d], d)[0]                      # d == t -> adversarial
    assert not detect([d], np.nextafter(d, 1.0))[0]
    assert detect([0.0], 0.0)[0]                  # t = 0 flags everything
    dec = algorithm1({"a", "b"}, 0, V, threshold=d)
    assert dec.flagged and dec.distance == pytest.approx(d)


def test_boundary_exact_for_decimal_thresholds():
    # s = 4/5 -> d = 1/5; in floats 1 - 0.8 < 0.2, the distance must still equal 0.2 exactly.
    v = [frozenset("abcde"), frozenset("xy")]
    d = distances([set("abcd")], [0], v)[0]
    assert d == 0.2 and jaccard_distance("abcd", "abcde") == 0.2
    assert detect([d], 0.2)[0] and algorithm1(set("abcd"), 0, v, 0.2).flagged
    rng = np.random.default_rng(5)
    for _ in range(200):
        a = set(rng.choice(list("abcdefghijkl"), rng.integers(0, 8)))
        b = set(rng.choice(list("abcdefghijkl"), rng.integers(0, 8)))
        assert jaccard_distance(a, b) == pytest.approx(1 - jaccard(a, b), abs=1e-15)
    assert jaccard_distance(set(), set()) == 1.0


def test_no_part_image_is_flagged_and_gets_no_class():
    for t in (0.0, 0.5, 1.0):
        dec = algorithm1(set(), 1, V, threshold=t, mode="flagged")
        assert dec.score == 0.0 and dec.distance == 1.0 and dec.flagged
        assert dec.final == NO_CLASS
    # mode "all" too
    assert algorithm1(set(), 1, V, threshold=1.0, mode="all").final == NO_CLASS


def test_parts_disjoint_from_every_class_give_no_class():
    assert best_class({"zzz"}, V) == NO_CLASS
    assert best_class({"zzz"}, V, pred=0) == NO_CLASS


def test_rectification_picks_argmax_similarity():
    # {c, d} vs V: 1/4, 1, 0 -> class 1
    assert best_class({"c", "d"}, V) == 1
    dec = algorithm1({"c", "d"}, 0, V, threshold=0.5)  # s = 1/4, d = 3/4 >= 0.5
    assert dec.flagged and dec.final == 1


def test_ties_prefer_m_prediction_then_lowest_index():
    tie_v = [frozenset({"a", "x"}), frozenset({"a", "y"}), frozenset({"a", "z"})]
    # {"a"} has similarity 1/2 with all three classes.
    assert best_class({"a"}, tie_v, pred=2) == 2
    assert best_class({"a"}, tie_v, pred=None) == 0
    # M's prediction not among the best: lowest tied index.
    v2 = [frozenset({"q"}), frozenset({"a", "y"}), frozenset({"a", "z"})]
    assert best_class({"a"}, v2, pred=0) == 1


def test_modes_flagged_vs_all():
    parts = [{"a", "b", "c"}, {"a", "b"}, {"e"}, set()]
    preds = np.array([0, 1, 2, 0])
    d = distances(parts, preds, V)  # 0, 1 - 0/4 = 1, 0, 1
    flags = detect(d, 0.5)
    np.testing.assert_array_equal(flags, [False, True, False, True])
    flagged = rectify(parts, V, preds, "flagged", flags=flags)
    np.testing.assert_array_equal(flagged, [0, 0, 2, NO_CLASS])
    everything = rectify(parts, V, preds, Mode.ALL)
    np.testing.assert_array_equal(everything, [0, 0, 2, NO_CLASS])
    # An unflagged image whose parts favour another class: "flagged" keeps M, "all" moves it.
    parts2 = [{"a", "b", "c", "d"}]      # V[0]: 3/4, V[1]: 2/4 -> argmax 0
    p2 = np.array([1])                   # s = 0.5, d = 0.5 < 0.9: not flagged
    f2 = detect(distances(parts2, p2, V), 0.9)
    assert not f2[0]
    assert rectify(parts2, V, p2, "flagged", flags=f2)[0] == 1
    assert rectify(parts2, V, p2, "all")[0] == 0


def test_mode_flagged_at_t0_equals_mode_all():
    rng = np.random.default_rng(1)
    universe = list("abcdez")
    parts = [set(rng.choice(universe, rng.integers(0, 4))) for _ in range(50)]
    preds = rng.integers(0, 3, 50)
    flags = detect(distances(parts, preds, V), 0.0)
    np.testing.assert_array_equal(rectify(parts, V, preds, "flagged", flags=flags),
                                  rectify(parts, V, preds, "all"))


def test_algorithm1_agrees_with_vectorised_helpers():
    rng = np.random.default_rng(2)
    universe = list("abcdez")
    for mode, t in itertools.product(("flagged", "all"), (0.0, 0.3, 0.5, 0.75, 1.0)):
        parts = [set(rng.choice(universe, rng.integers(0, 4))) for _ in range(30)]
        preds = rng.integers(0, 3, 30)
        d = distances(parts, preds, V)
        flags = detect(d, t)
        final = rectify(parts, V, preds, mode, flags=flags)
        for i in range(30):
            dec = algorithm1(parts[i], preds[i], V, t, mode)
            assert dec.flagged == flags[i] and dec.final == final[i]
            assert dec.distance == pytest.approx(d[i])


def test_algorithm_input_errors():
    with pytest.raises(ValueError, match="mode"):
        as_mode("sometimes")
    with pytest.raises(ValueError, match="threshold"):
        detect([0.1], 1.5)
    with pytest.raises(ValueError, match="threshold"):
        algorithm1({"a"}, 0, V, threshold=-0.1)
    with pytest.raises(ValueError, match="flags"):
        rectify([{"a"}], V, [0], "flagged")
    with pytest.raises(ValueError, match="preds"):
        scores([{"a"}, {"b"}], [0], V)
    with pytest.raises(ValueError, match="class indices"):
        scores([{"a"}], [5], V)
    with pytest.raises(ValueError, match="string"):
        scores(["abc"], [0], V)


# ----------------------------------------------------------------------------- UnMask class

CLASSES = ("dog", "car", "bird")


class FakeModel:
    """Predicts class (mean pixel * 3) clipped to [0, 2]; records the batch sizes it saw."""

    def __init__(self):
        self.batches = []

    def __call__(self, x):
        self.batches.append(len(x))
        idx = np.clip((x.mean(axis=(1, 2, 3)) * 3).astype(int), 0, 2)
        return np.eye(3, dtype=np.float32)[idx] * 5.0


def _images(levels):
    return np.stack([np.full((8, 8, 3), v, np.float32) for v in levels])


@pytest.fixture
def oracle():
    return OracleExtractor({
        "dog/1.jpg": CLASS_PARTS["dog"],
        "car/2.jpg": CLASS_PARTS["car"],
        "bird/3.jpg": {"beak", "wing", "eye"},
        "bird/4.jpg": set(),
    }, source="toy.json")


def test_protect_with_fake_model_and_oracle(oracle):
    model = FakeModel()
    um = UnMask(model, oracle, CLASS_PARTS, CLASSES, threshold=0.5, mode="flagged")
    # Benign dog (pred dog), attacked car predicted bird, bird predicted bird, no-part bird.
    x = _images([0.1, 0.9, 0.9, 0.9])
    keys = ["dog/1.jpg", "car/2.jpg", "bird/3.jpg", "bird/4.jpg"]
    res = um.protect(x, keys=keys, batch_size=3)
    assert model.batches == [3, 1]
    np.testing.assert_array_equal(res.preds, [0, 2, 2, 2])
    assert res.parts[1] == CLASS_PARTS["car"]
    assert res.scores[0] == 1.0 and not res.flags[0] and res.final[0] == 0
    assert res.flags[1] and res.final[1] == 1          # rectified to car
    bird_s = jaccard({"beak", "wing", "eye"}, CLASS_PARTS["bird"])
    assert res.scores[2] == pytest.approx(bird_s)
    assert res.flags[2] == (1 - bird_s >= 0.5) and res.flags[2]   # 1 - 3/9 >= 0.5
    assert res.final[2] == 2                                        # bird stays the best match
    assert res.flags[3] and res.final[3] == NO_CLASS
    np.testing.assert_allclose(res.distances, 1 - res.scores)
    assert res.extractor_kind == "oracle" and res.mode == "flagged"
    recs = res.records()
    assert len(recs) == 4 and recs[1]["final"] == 1 and recs[3]["parts"] == []
    json.dumps(recs)
    assert res.final_names() == ["dog", "car", "bird", None]


def test_protect_decide_consistent_with_helpers(oracle):
    um = UnMask(FakeModel(), oracle, CLASS_PARTS, CLASSES, threshold=0.2, mode="all")
    keys = ["dog/1.jpg", "car/2.jpg", "bird/3.jpg", "bird/4.jpg"]
    res = um.protect(_images([0.5, 0.5, 0.1, 0.9]), keys=keys)
    v = [CLASS_PARTS[c] for c in CLASSES]
    np.testing.assert_array_equal(res.final, rectify(res.parts, v, res.preds, "all"))


def test_unmask_input_validation(oracle):
    m = FakeModel()
    with pytest.raises(ValueError, match="horse"):
        UnMask(m, oracle, {"dog": {"ear"}}, ("dog", "horse"), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        UnMask(m, oracle, CLASS_PARTS, CLASSES, 1.2)
    with pytest.raises(ValueError, match="mode"):
        UnMask(m, oracle, CLASS_PARTS, CLASSES, 0.5, mode="some")
    with pytest.raises(ValueError, match="duplicates"):
        UnMask(m, oracle, CLASS_PARTS, ("dog", "dog"), 0.5)
    with pytest.raises(ValueError, match="callable"):
        UnMask(None, oracle, CLASS_PARTS, CLASSES, 0.5)
    um = UnMask(m, oracle, CLASS_PARTS, CLASSES, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        um.protect(_images([0.5]) * 255.0, keys=["dog/1.jpg"])
    with pytest.raises(ValueError, match="uint8"):
        um.protect(np.zeros((1, 8, 8, 3), np.uint8), keys=["dog/1.jpg"])
    with pytest.raises(ValueError, match="shape"):
        um.protect(np.zeros((8, 8, 3), np.float32), keys=["dog/1.jpg"])
    with pytest.raises(ValueError, match="keys has 1 entries but there are 2"):
        um.protect(_images([0.1, 0.2]), keys=["dog/1.jpg"])
    with pytest.raises(ValueError, match="needs keys"):
        um.protect(_images([0.1]))
    with pytest.raises(ValueError, match="batch_size"):
        um.protect(_images([0.1]), keys=["dog/1.jpg"], batch_size=0)
    bad_model = UnMask(lambda x: np.zeros((len(x), 5)), oracle, CLASS_PARTS, CLASSES, 0.5)
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        bad_model.protect(_images([0.1]), keys=["dog/1.jpg"])


# ----------------------------------------------------------------------------- extractors

def _write_coco(tmp_path, obj):
    path = tmp_path / "val.json"
    path.write_text(json.dumps(obj))
    return str(path)


def _full_coco(images, parts_per_image):
    """A valid COCO parts file (the oracle validates geometry and the 44 part names):
    ``images`` file names, ``parts_per_image`` {image index: [part names]}."""
    from data.knowledge import PART_IDS
    square = [[1.0, 1.0, 3.0, 1.0, 3.0, 3.0, 1.0, 3.0]]
    anns = [{"id": len_ + 1, "image_id": i + 1, "category_id": PART_IDS[p],
             "segmentation": square, "area": 4, "bbox": [1, 1, 2, 2], "iscrowd": 0}
            for len_, (i, p) in enumerate((i, p) for i, ps in sorted(parts_per_image.items())
                                          for p in ps)]
    names = sorted({p for ps in parts_per_image.values() for p in ps})
    return {"images": [{"id": i + 1, "file_name": f, "height": 4, "width": 4}
                       for i, f in enumerate(images)],
            "annotations": anns,
            "categories": [{"id": PART_IDS[n], "name": n} for n in names]}


def test_oracle_from_coco(tmp_path):
    coco = _full_coco(["a.jpg", "b.jpg", "sub/c.jpg"],
                      {0: ["tail", "tail", "beak"], 2: ["wheel"]})
    path = _write_coco(tmp_path, coco)
    ex = OracleExtractor.from_coco(path)
    assert ex.kind == "oracle" and len(ex) == 3
    x = np.zeros((3, 4, 4, 3), np.float32)
    got = ex.extract(x, ["a.jpg", "b.jpg", "./sub/c.jpg"])
    assert got == [frozenset({"tail", "beak"}), frozenset(), frozenset({"wheel"})]
    # Base-name fallback when unambiguous.
    assert ex.extract(x[:1], ["cs5-2/test/dog/a.jpg"]) == [frozenset({"tail", "beak"})]
    with pytest.raises(ValueError,
                       match=r"no ground-truth parts for image nope\.jpg in .*val\.json"):
        ex.extract(x[:1], ["nope.jpg"])
    with pytest.raises(ValueError, match="needs keys"):
        ex.extract(x, None)
    with pytest.raises(ValueError, match="3 keys for 2 images"):
        ex.extract(x[:2], ["a.jpg", "b.jpg", "a.jpg"])


def test_oracle_coco_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        OracleExtractor.from_coco(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="annotations"):
        OracleExtractor.from_coco(_write_coco(tmp_path, {"images": [], "categories": []}))
    bad = {"images": [{"id": 1, "file_name": "a.jpg"}],
           "annotations": [{"image_id": 9, "category_id": 0}],
           "categories": [{"id": 0, "name": "plant"}]}
    with pytest.raises(ValueError, match="unknown image id 9"):
        coco_parts_by_file(bad, "x.json")
    bad["annotations"] = [{"image_id": 1, "category_id": 4}]
    with pytest.raises(ValueError, match="unknown category id 4"):
        coco_parts_by_file(bad, "x.json")
    amb = OracleExtractor({"t/1.jpg": {"ear"}, "v/1.jpg": {"eye"}}, source="m")
    with pytest.raises(ValueError, match="ambiguous"):
        amb.parts_of("other/1.jpg")


# ----------------------------------------------------------------------------- thresholds

def test_threshold_for_fpr_hits_target_on_known_scores():
    # 10 benign distances; FPR(t) = mean(d >= t) is 1.0, .8, .7, .4, .3, .2, .1 at the
    # candidates 0, .1, .2, .5, .6, .8, 1.0.
    d = np.array([0.0, 0.0, 0.1, 0.2, 0.2, 0.2, 0.5, 0.6, 0.8, 1.0])
    for target, expected in ((0.3, 0.6), (0.35, 0.6), (0.4, 0.5), (0.75, 0.2), (0.1, 1.0)):
        t = thresholds.threshold_for_fpr(d, target)
        assert t == expected
        assert np.mean(d >= t) <= target
    with pytest.raises(ValueError, match="no threshold in"):
        thresholds.threshold_for_fpr(d, 0.05)    # d = 1.0 alone is 10% > 5%


def test_threshold_for_fpr_properties_random():
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(5, 80))
        d = rng.integers(0, 8, n) / 8.0 * 0.99     # ties, all < 1
        target = float(rng.uniform(0.01, 0.99))
        t = thresholds.threshold_for_fpr(d, target)
        fpr = np.mean(d >= t)
        assert 0.0 <= t <= 1.0
        assert fpr <= target + 1e-12
        smaller = np.unique(d)[np.unique(d) < t]
        if smaller.size:                            # any smaller candidate would exceed target
            assert np.mean(d >= smaller[-1]) > target


def test_threshold_tie_block_and_rounding():
    d = np.array([0.2] * 5 + [0.9] * 5)
    assert thresholds.threshold_for_fpr(d, 0.5) == 0.9      # 0.9 block is exactly 50%
    assert thresholds.threshold_for_fpr(d, 0.49) > 0.9      # only "nothing flagged" fits
    d100 = np.linspace(0, 0.99, 100)
    t = thresholds.threshold_for_fpr(d100, 0.29)
    assert np.count_nonzero(d100 >= t) == 29               # float rounding does not lose one


def test_threshold_unattainable_and_bad_target():
    d = np.array([0.1, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no threshold in"):
        thresholds.threshold_for_fpr(d, 0.5)
    assert thresholds.threshold_for_fpr(d, 0.5, on_unattainable="clip") == 1.0
    ch = thresholds.choose_threshold(d, 0.5, adversarial_d=[1.0, 1.0])
    assert ch.threshold == 1.0 and ch.fpr == 0.75 and not ch.attainable and ch.tpr == 1.0
    for bad in (0, 1, 1.5, -0.1, "x", True):
        with pytest.raises(ValueError, match="target_fpr"):
            thresholds.threshold_for_fpr(d, bad)
    with pytest.raises(ValueError, match="benign_d"):
        thresholds.threshold_for_fpr([], 0.1)
    with pytest.raises(ValueError, match="benign_d"):
        thresholds.threshold_for_fpr([0.1, 1.5], 0.1)


def test_youden_threshold_separates_perfectly_separable_scores():
    b = np.array([0.0, 0.1, 0.2])
    a = np.array([0.6, 0.8, 1.0])
    t = thresholds.threshold_max_youden(b, a)
    assert np.all(a >= t) and not np.any(b >= t)


# ----------------------------------------------------------------------------- metrics

def test_roc_and_auc_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    for i in range(60):
        n = int(rng.integers(4, 100))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.integers(0, 6, n) / 5.0 if i % 2 else rng.random(n)   # with and without ties
        for drop in (True, False):
            ours = metrics.roc_curve(y, s, drop_intermediate=drop)
            ref = skm.roc_curve(y, s, drop_intermediate=drop)
            for a, b in zip(ours, ref):
                np.testing.assert_allclose(a, b)
        assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))


def test_auc_known_values_and_errors():
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == 0.5          # tie = half credit
    assert metrics.roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    with pytest.raises(ValueError, match="both labels"):
        metrics.roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(benign\\) / 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])


def test_rates_at_threshold_use_ge_rule():
    y = [1, 1, 0, 0]
    s = [1.0, 0.5, 0.5, 0.0]
    assert metrics.rates_at_threshold(y, s, 0.5) == (1.0, 0.5)
    assert metrics.rates_at_threshold(y, s, 0.6) == (0.5, 0.0)


def test_accuracy_counts_no_class_wrong():
    assert metrics.accuracy([0, -1, 2, 1], [0, 1, 2, 0]) == 0.5
    with pytest.raises(ValueError):
        metrics.accuracy([0, 1], [0])


def test_detection_set_contamination_half():
    labels = np.array([0, 1, 2, 0, 1])
    benign_pred = np.array([0, 1, 0, 0, 1])      # image 2 wrong before the attack
    adv_pred = np.array([1, 1, 1, 2, 0])         # attack fails on image 1
    b_d = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    a_d = np.array([0.9, 0.8, 0.7, 0.6, 0.55])
    ds = metrics.detection_set(b_d, a_d, labels, benign_pred, adv_pred,
                               require_benign_correct=True)       # the "strict" set
    np.testing.assert_array_equal(ds.index, [0, 3, 4])
    assert ds.n_attacked == 5 and ds.n_successful == 3 and ds.n_images == 6
    assert ds.labels.mean() == 0.5
    np.testing.assert_allclose(ds.scores, [0.9, 0.6, 0.55, 0.1, 0.4, 0.5])
    res = metrics.evaluate_detection(ds, 0.55)
    assert res.auc == 1.0 and res.tpr == 1.0 and res.fpr == 0.0
    empty = metrics.detection_set(b_d, a_d, labels, benign_pred, labels)
    r0 = metrics.evaluate_detection(empty, 0.5)
    assert empty.n_successful == 0 and r0.auc is None and r0.tpr is None


def test_detection_set_default_is_the_original_codes_rule():
    """The original kept every test image with M(x_adv) != y and its benign version, without
    asking that M(x) == y: image 2 (wrong before the attack, still wrong after) is in."""
    labels = np.array([0, 1, 2, 0, 1])
    benign_pred = np.array([0, 1, 0, 0, 1])
    adv_pred = np.array([1, 1, 1, 2, 0])
    b_d = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    a_d = np.array([0.9, 0.8, 0.7, 0.6, 0.55])
    # the original's set, restated: indices where adv_pred != label
    expected = [i for i in range(5) if adv_pred[i] != labels[i]]
    ds = metrics.detection_set(b_d, a_d, labels, benign_pred, adv_pred)
    np.testing.assert_array_equal(ds.index, expected)
    assert expected == [0, 2, 3, 4] and ds.n_successful == 4
    np.testing.assert_allclose(ds.scores, [0.9, 0.7, 0.6, 0.55, 0.1, 0.3, 0.4, 0.5])
    assert metrics.DEFAULT_DETECTION_SET == "original"
    assert metrics.check_detection_set(" Strict ") == "strict"
    with pytest.raises(ValueError, match="original, strict"):
        metrics.check_detection_set("loose")


def test_class_set_feature_map_with_unmask_helpers():
    cs = get_class_set("cs5-2")
    v = [CLASS_PARTS[c] for c in cs.classes]
    # The full part set of each class is recognised as that class with s = 1.
    for i, c in enumerate(cs.classes):
        assert scores([CLASS_PARTS[c]], [i], v)[0] == 1.0
        assert best_class(CLASS_PARTS[c], v) == i


def test_attack_summary_end_to_end_with_decide(oracle):
    um = UnMask(FakeModel(), oracle, CLASS_PARTS, CLASSES, threshold=0.5, mode="flagged")
    labels = np.array([0, 1, 2, 2])
    parts = [CLASS_PARTS["dog"], CLASS_PARTS["car"], CLASS_PARTS["bird"], frozenset()]
    benign = um.decide([0, 1, 2, 2], parts)
    adv = um.decide([2, 2, 2, 0], parts)                 # attack succeeds on images 0, 1, 3
    summ = metrics.attack_summary(labels, benign, adv, at_pred=[0, 0, 2, 2])
    assert summ["n_attacked"] == 4 and summ["n_successful"] == 3
    assert summ["acc_none"] == 0.25 and summ["acc_at"] == 0.75
    # UnMask recovers dog and car from their parts; the no-part image gets no class.
    np.testing.assert_array_equal(adv.final, [0, 1, 2, NO_CLASS])
    assert summ["acc_um"] == 0.75
    # Successful-attack set: adversarial d = 1 - s for wrong classes vs benign.
    ds = metrics.detection_set(benign.distances, adv.distances, labels, benign.preds, adv.preds)
    assert summ["auc"] == pytest.approx(metrics.roc_auc(ds.labels, ds.scores))
    assert (summ["tpr"], summ["fpr"]) == metrics.rates_at_threshold(ds.labels, ds.scores, 0.5)
    b = metrics.benign_summary(labels, benign)
    assert b == {"acc_none": 1.0, "acc_at": None, "acc_um": 0.75}
    other = UnMask(FakeModel(), oracle, CLASS_PARTS, CLASSES, threshold=0.7).decide([0] * 4, parts)
    with pytest.raises(ValueError, match="different thresholds"):
        metrics.attack_summary(labels, benign, other)


def test_protect_with_a_tf_keras_model(oracle):
    import tfcompat
    tf, keras = tfcompat.import_tf()
    tf.random.set_seed(0)
    model = keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    x = np.random.default_rng(6).random((3, 8, 8, 3)).astype(np.float32)
    um = UnMask(model, oracle, CLASS_PARTS, CLASSES, threshold=0.5)
    res = um.protect(x, keys=["dog/1.jpg", "car/2.jpg", "bird/4.jpg"], batch_size=2)
    np.testing.assert_array_equal(res.preds, np.argmax(model.predict(x, verbose=0), axis=1))
    assert res.preds.dtype == np.int64 and res.flags[2] and res.final[2] == NO_CLASS


def test_inference_fn_is_the_models_forward_pass_traced_once():
    """tf-keras models are predicted through one graph per model (batch dimension free:
    one trace for every batch size), with the eager outputs; other callables as they are;
    the cache does not keep a model alive."""
    import gc
    import weakref

    import tfcompat
    from models.inference import inference_fn

    tf, keras = tfcompat.import_tf()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    fn = inference_fn(model)
    assert inference_fn(model) is fn
    for n in (5, 2, 7):
        x = np.random.default_rng(n).random((n, 8, 8, 3)).astype(np.float32)
        np.testing.assert_allclose(fn(x).numpy(), model(x, training=False).numpy(),
                                   rtol=1e-6, atol=1e-6)   # dropout off, BN statistics
    assert fn.experimental_get_tracing_count() == 1

    def plain(x):
        return x
    assert inference_fn(plain) is plain

    class Subclassed(keras.Model):          # no symbolic inputs: called as it is
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(keras.layers.Flatten()(x))
    sub = Subclassed()
    assert inference_fn(sub) is sub
    ref = weakref.ref(model)
    del model, fn
    gc.collect()
    assert ref() is None          # the cache holds the model weakly


def test_mode_all_breaks_ties_like_the_original_code():
    """The original re-classified every image with a strict '>' scan over the class set, so
    the first best class wins whatever M said; mode 'flagged' keeps the project's rule."""
    v = [frozenset({"a", "x"}), frozenset({"a", "y"}), frozenset({"a", "z"})]

    def original(parts):                      # the original's scan, restated
        best, best_sim = -1, 0.0
        for c, expected in enumerate(v):
            sim = len(parts & expected) / len(parts | expected)
            if sim > best_sim:
                best, best_sim = c, sim
        return best

    parts = [frozenset({"a"})] * 3 + [frozenset({"b"})]
    preds = np.array([2, 1, 0, 1])
    got = rectify(parts, v, preds, "all")
    assert got.tolist() == [original(p) for p in parts] == [0, 0, 0, -1]
    flags = np.ones(4, dtype=bool)
    assert rectify(parts, v, preds, "flagged", flags=flags).tolist() == [2, 1, 0, -1]
    assert algorithm1({"a"}, 2, v, threshold=0.0, mode="all").final == 0
    assert algorithm1({"a"}, 2, v, threshold=0.0, mode="flagged").final == 2

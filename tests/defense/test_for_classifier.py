"""Protecting your own classifier with a defense of the bench, outside a run
(FitContext.for_classifier, ImageSet.of): the defense fits on your validation images, its
answer is Algorithm 1's on your images, and what it cannot get from such a context is refused
with the way to run it."""
import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from data.knowledge import CLASS_PARTS, get_class_set  # noqa: E402
from defense import UnMask  # noqa: E402
from defense.base import AdaptiveOptions, FitContext, ImageSet  # noqa: E402
from defense.defenses import build_defense  # noqa: E402
from defense.threats import Goal, Threat  # noqa: E402
from toys import CHANNEL_SIZE, channel_images  # noqa: E402

CS = get_class_set("CS3a")          # car, person, train
SIZE = CHANNEL_SIZE


def _images(n, seed):
    """Images whose brightest channel is the class (tests/toys.py)."""
    return channel_images(np.random.default_rng(seed), n)


class _ChannelParts:
    """A part extractor reading the brightest channel: the parts of that class, except for
    images whose top-left pixel is dark (then another class's: K "fooled")."""
    kind = "test"

    def __init__(self):
        self.calls = 0

    def extract(self, images, keys=None):
        self.calls += 1
        out = []
        for im in np.asarray(images):
            c = int(np.argmax(im.mean(axis=(0, 1))))
            if im[0, 0].max() < 0.1:
                c = (c + 1) % 3
            out.append(frozenset(CLASS_PARTS[CS.classes[c]]))
        return out


@pytest.fixture(scope="module")
def classifier(toy):
    """Your classifier: [0, 1] images -> logits over CS3a's three classes (the colour toy's
    conv net, tests/toys.py)."""
    return toy[0]


def test_image_set_of_your_arrays_names_each_image():
    x, y = _images(3, 0)
    s = ImageSet.of(x, y, split="val")
    assert s.keys == ["val-0", "val-1", "val-2"] and s.split == "val" and len(s) == 3
    assert ImageSet.of(x, y, name="mine").keys[2] == "mine-2"
    with pytest.raises(ValueError, match="ImageSet.labels must be a 1-D array of 3"):
        ImageSet.of(x, y[:2])


def test_unmask_fitted_on_your_validation_images_is_algorithm_1(classifier):
    """The threshold is chosen on your clean validation images for the target FPR, and the
    defense's answer on your test images is UnMask's own (Algorithm 1) at that threshold."""
    val_x, val_y = _images(40, 1)
    val_x[:8, 0, 0] = 0.0                      # K fooled on 8 clean validation images
    extractor = _ChannelParts()
    logs = []
    ctx = FitContext.for_classifier(classifier, CS, val_x, val_y, extractor,
                                    target_fpr=0.25, log=logs.append)
    um = build_defense("unmask")
    um.fit(ctx)
    assert any("chosen on 40 validation images for FPR <= 0.25" in m for m in logs), logs
    p = um.params()
    assert p["threshold_source"] == "validation" and p["val_fpr"] <= 0.25
    x, y = _images(30, 2)
    x[::3, 0, 0] = 0.0                         # every third test image: K sees another class
    got = um.predict(ImageSet.of(x, y))
    want = UnMask(classifier, extractor, CLASS_PARTS, CS.classes, threshold=um.threshold,
                  mode="flagged").protect(x).final
    np.testing.assert_array_equal(got, want)
    assert np.any(got != classifier.predict(x, verbose=0).argmax(1)), \
        "a case where UnMask changes the classifier's answer"
    # a threshold you give is used as it is
    given = FitContext.for_classifier(classifier, CS, val_x, val_y, extractor, threshold=0.4)
    um2 = build_defense("unmask")
    um2.fit(given)
    assert um2.threshold == 0.4 and um2.params()["threshold_source"] == "given"


def test_what_such_a_context_cannot_give_is_refused_with_the_way_to_run_it(classifier):
    val_x, val_y = _images(12, 1)
    ctx = FitContext.for_classifier(classifier, CS, val_x, val_y, _ChannelParts())
    with pytest.raises(ValueError, match="needs the adversarially trained"):
        build_defense("unmask:m=at").fit(ctx)
    with pytest.raises(ValueError, match="robust_extractor="):
        build_defense("unmask:k=robust").fit(ctx)
    with pytest.raises(ValueError, match=r"attacked with .* give its parameter where it "
                                         r"has one \(e.g. noise:10\)"):
        build_defense("noise").fit(ctx)
    with pytest.raises(ValueError, match=r"fitted on train images: give them as "
                                         r"FitContext.for_classifier\(train="):
        build_defense("trajectory").fit(ctx)
    with pytest.raises(ValueError, match=r"fitted on train images"):
        build_defense("pca").fit(ctx)
    no_k = FitContext.for_classifier(classifier, CS, val_x, val_y)
    with pytest.raises(ValueError, match=r"holds K: give FitContext.for_classifier\(extractor="):
        build_defense("unmask").fit(no_k)
    with pytest.raises(ValueError, match=r"logits of shape \(3,\) for one image; .* has 5 "
                                         r"classes"):
        FitContext.for_classifier(classifier, get_class_set("CS5b"), val_x, val_y)
    with pytest.raises(ValueError, match="val_images is empty"):
        FitContext.for_classifier(classifier, CS, val_x[:0], val_y[:0], _ChannelParts())
    with pytest.raises(ValueError, match="target_fpr"):
        FitContext.for_classifier(classifier, CS, val_x, val_y, _ChannelParts(),
                                  target_fpr=2.0)


def test_your_adversarially_trained_classifier_is_attacked_white_box_by_the_engine(classifier):
    """``at`` on your AT model: its defense-aware target is the model itself, and every image
    the engine says it won is one the defense answers wrongly."""
    from attacks import resolve_config
    from attacks.engine import AdaptiveEngine, EngineSettings

    val_x, val_y = _images(12, 1)
    ctx = FitContext.for_classifier(classifier, CS, val_x, val_y, _ChannelParts(),
                                    at_model=classifier)
    at = build_defense("at")
    at.fit(ctx)
    x, y = _images(16, 3)
    target = at.attack_target(Threat.ADAPTIVE, Goal.WRONG, AdaptiveOptions())
    res = AdaptiveEngine(resolve_config("apgd_ce", 64), target,
                         EngineSettings(steps=20, restarts=1), seed=0).run(x, y)
    assert res.success.any(), "a budget where the attack wins somewhere"
    final = at.predict(ImageSet.of(res.x_adv, y, name="attacked"))
    np.testing.assert_array_equal(final != y, res.success)
    assert np.abs(res.x_adv - x).max() <= 64 / 255 + 1e-6


def test_defenses_needing_training_images_or_a_parameter_fit_on_what_you_give(classifier):
    """``pca`` fits on the training images you give; ``noise:10`` needs nothing attacked."""
    val_x, val_y = _images(12, 1)
    train_x, train_y = _images(60, 4)
    ctx = FitContext.for_classifier(classifier, CS, val_x, val_y, train=(train_x, train_y))
    x, y = _images(10, 5)
    for name in ("pca", "noise:10"):
        d = build_defense(name)
        d.fit(ctx)
        pred = d.predict(ImageSet.of(x, y))
        assert pred.shape == (10,) and np.all((pred >= 0) & (pred < 3)), name
        assert np.mean(pred == y) > 0.5, name

"""Model K training features: layer selection, gradient clipping, weight decay, the
extractor's default threshold, `--weights last` resume, the Trainer's state across `train`
calls and the one-way model -> trainer dependency (tiny config, a few steps each)."""
import ast
import json
import os
import re

import numpy as np
import pytest

from mrcnn_config import get_config
from evaluation import model_k as cli
from models.mrcnn import data_gen
from models.mrcnn.extractor import PartExtractor
from models.mrcnn.constants import LAYER_REGEX
from models.mrcnn.model import MaskRCNN
from models.mrcnn.toy_data import TOY_CLASSES, ToyDataset

TOY_NAMES = ["BG"] + list(TOY_CLASSES)
BACKBONE_REGEX = r"conv1|bn_conv1|(res|bn)\d.*"
CLIP = 0.01


def _batch(config, seed=0):
    ds = ToyDataset(4, 64, seed=seed)
    return next(data_gen.batch_iterator(ds, config, np.random.default_rng(seed)))


def _weights(model, regex):
    """``{variable name: variable}`` of the trainable weights of layers matching ``regex``."""
    return {w.name: w for layer in model.ancestor_layers() if re.fullmatch(regex, layer.name)
            for w in layer.trainable_weights}


def _step(model, layers, lr, variables):
    """One train step of ``layers``; returns ``(losses, {name: (before, after)})``."""
    names = list(variables)
    before = model.read_variables([variables[n] for n in names])
    losses = model.trainer.step(layers, _batch(model.config), lr)
    after = model.read_variables([variables[n] for n in names])
    return losses, {n: (b, a) for n, b, a in zip(names, before, after)}


def _changed(pairs):
    return {n for n, (b, a) in pairs.items() if not np.array_equal(b, a)}


@pytest.fixture(scope="module")
def clipped(tmp_path_factory):
    """Tiny K with momentum 0 (one step moves weights by exactly lr * clipped gradient)."""
    cfg = get_config("tiny", IMAGES_PER_GPU=1, GRADIENT_CLIP_NORM=CLIP, LEARNING_MOMENTUM=0.0)
    model = MaskRCNN("training", cfg, str(tmp_path_factory.mktemp("logs")), seed=0)
    yield model
    model.close()


@pytest.mark.slow
def test_heads_stage_keeps_the_backbone_and_all_trains_it(clipped):
    backbone = _weights(clipped, BACKBONE_REGEX)
    heads = _weights(clipped, LAYER_REGEX["heads"])
    assert len(backbone) > 20 and len(heads) > 20 and not set(backbone) & set(heads)
    both = dict(backbone, **heads)
    _, pairs = _step(clipped, "heads", 1.0, both)
    changed = _changed(pairs)
    assert not changed & set(backbone), sorted(changed & set(backbone))[:5]
    assert len(changed & set(heads)) >= 0.9 * len(heads)
    assert {"mrcnn_class_logits", "rpn_conv_shared", "fpn_p2"} <= {n.split("/")[0] for n in changed}
    _, pairs = _step(clipped, "all", 1.0, both)
    changed = _changed(pairs)
    assert len(changed & set(backbone)) >= 0.9 * len(backbone)
    assert "conv1/kernel:0" in changed


def _moving_statistics(model, regex):
    """``{name: variable}`` of the batch-norm moving means/variances of layers matching
    ``regex`` (inner layers of TimeDistributed wrappers included)."""
    return {w.name: w for layer in model.ancestor_layers() if re.fullmatch(regex, layer.name)
            for w in layer.non_trainable_weights if "moving_" in w.name}


def test_frozen_batch_norm_keeps_its_moving_statistics(clipped):
    """As in matterport (a frozen Keras layer has no updates): with TRAIN_BN, a "heads" step
    moves the heads' batch-norm statistics but not the backbone's; "all" moves both."""
    assert clipped.config.TRAIN_BN
    backbone = _moving_statistics(clipped, BACKBONE_REGEX)
    heads = _moving_statistics(clipped, LAYER_REGEX["heads"])
    assert len(backbone) > 10 and heads
    both = dict(backbone, **heads)
    _, pairs = _step(clipped, "heads", 0.01, both)
    changed = _changed(pairs)
    assert not changed & set(backbone), sorted(changed & set(backbone))[:5]
    assert changed & set(heads) == set(heads)
    _, pairs = _step(clipped, "all", 0.01, both)
    assert _changed(pairs) & set(backbone) == set(backbone)


def test_gradient_clipping_bounds_the_update_norm(clipped):
    """With a huge learning rate the global update norm is lr * GRADIENT_CLIP_NORM: without
    clipping it would be lr * |gradient|, orders of magnitude more."""
    lr = 100.0
    trained = {v.name: v for v in clipped.trainer.train_op("all").variables}
    losses, pairs = _step(clipped, "all", lr, trained)
    assert np.isfinite(losses["loss"])
    norm = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2) for b, a in pairs.values()))
    assert norm == pytest.approx(lr * CLIP, rel=0.02)


@pytest.mark.slow
def test_weight_decay_shrinks_weights_but_not_batch_norm_scales(tmp_path):
    """With all loss weights 0, the only gradient is the L2 decay: one SGD step moves each
    kernel/bias by -lr * d(decay)/dw and leaves BN gamma/beta alone.

    The decay term is matterport's ``keras.regularizers.l2(WEIGHT_DECAY)(w) / size(w)`` =
    ``WEIGHT_DECAY * sum(w**2) / size(w)`` (no 1/2), so its gradient is
    ``2 * WEIGHT_DECAY * w / size(w)``."""
    wd, lr = 0.5, 3.0
    cfg = get_config("tiny", IMAGES_PER_GPU=1, WEIGHT_DECAY=wd, GRADIENT_CLIP_NORM=1e9,
                     LEARNING_MOMENTUM=0.0, LOSS_WEIGHTS={k: 0.0 for k in
                                                          get_config("tiny").LOSS_WEIGHTS})
    model = MaskRCNN("training", cfg, str(tmp_path), seed=0)
    try:
        trained = {v.name: v for v in model.trainer.train_op("heads").variables}
        losses, pairs = _step(model, "heads", lr, trained)
    finally:
        model.close()
    decayed = {n: p for n, p in pairs.items() if "gamma" not in n and "beta" not in n}
    assert len(decayed) < len(pairs), "the heads have batch-norm gamma/beta"
    for name, (before, after) in pairs.items():
        expected = before * (1 - 2 * lr * wd / before.size) if name in decayed else before
        np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-7, err_msg=name)
    decay = sum(wd * np.sum(b.astype(np.float64) ** 2) / b.size for b, _ in decayed.values())
    assert losses["loss"] == pytest.approx(decay, rel=1e-4)


def test_extractor_threshold_defaults_to_zero(tmp_path):
    """The original UnMask used every detection: both constructors default to threshold 0,
    and from_checkpoint also builds K with DETECTION_MIN_CONFIDENCE 0."""
    cfg = get_config("tiny", DETECTION_MIN_CONFIDENCE=0.9)
    model = MaskRCNN("inference", cfg, str(tmp_path))
    try:
        ext = PartExtractor(model, TOY_NAMES)
        assert ext.threshold == 0.0
        det = {"class_ids": np.array([1, 2, 0]), "scores": np.array([0.001, 0.02, 0.9])}
        assert ext.part_sets([det]) == [frozenset(TOY_NAMES[1:3])]
        model.save_weights(str(tmp_path / "tiny20240101T0000" / "mask_rcnn_tiny_0001.h5"))
    finally:
        model.close()
    ext = PartExtractor.from_checkpoint("last", cfg, model_dir=str(tmp_path),
                                        class_names=TOY_NAMES)
    try:
        assert ext.threshold == 0.0 and ext.config.DETECTION_MIN_CONFIDENCE == 0
        layer = ext.model.keras_model.get_layer("mrcnn_detection")
        assert layer.get_config()["min_confidence"] == 0.0
    finally:
        ext.close()


@pytest.mark.slow
def test_weights_last_resumes_at_the_saved_epoch_in_the_same_run(tmp_path, monkeypatch):
    """`main.py --model K --weights last` continues the newest run: next stage, same folder,
    config.json written once (evaluation is stubbed: only the training path is tested)."""
    import data.synthetic
    monkeypatch.setattr(data.synthetic, "ensure_dataset", lambda *a, **k: {})
    monkeypatch.setattr(cli, "load_parts_dataset", lambda d, split: ToyDataset(2, 64, seed=1))
    evaluated = []
    monkeypatch.setattr(cli, "evaluate_model_k", lambda *a, **k: evaluated.append(a[2]) or {})
    monkeypatch.setattr(cli, "format_metrics", lambda m: "(evaluation stubbed)")
    logs = tmp_path / "logs"
    opts = dict(k_config="tiny", k_steps=2, k_log_dir=str(logs), no_progress=True)
    first = cli.run_model_k_report(opts, k_epochs="1")["train"]
    run = first["log_dir"]
    config_file = os.path.join(run, "config.json")
    stamp = os.stat(config_file).st_mtime_ns
    second = cli.run_model_k_report(opts, k_epochs="1,1", weights="last")["train"]
    assert second["weights"] == first["checkpoint"] == os.path.join(run, "mask_rcnn_tiny_0001.h5")
    assert [(h["epoch"], h["layers"]) for h in second["history"]] == [(2, "4+")]
    assert second["log_dir"] == run and os.listdir(logs) == [os.path.basename(run)]
    assert second["checkpoint"] == os.path.join(run, "mask_rcnn_tiny_0002.h5")
    assert os.stat(config_file).st_mtime_ns == stamp
    with open(config_file) as f:
        recorded = json.load(f)
    assert recorded["NAME"] == "tiny" and recorded["SMALL_BACKBONE_WIDTH"] == 8
    assert evaluated == ["last", "last"]


def _imports(tree):
    """``(module, name)`` of every import in ``tree`` (function bodies included); ``name`` is
    None for ``import module``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                yield node.module or "", alias.name


def _private_accesses(tree, owners):
    """Source of every ``x._name`` / ``getattr(x, "_name")`` whose ``x`` is a name or an
    attribute spelled as one of ``owners`` (e.g. ``model``, ``self.model``)."""
    def owned(node):
        return (isinstance(node, ast.Name) and node.id in owners) or \
            (isinstance(node, ast.Attribute) and node.attr in owners)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and owned(node.value):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr") and len(node.args) >= 2 \
                and owned(node.args[0]) and isinstance(node.args[1], ast.Constant) \
                and str(node.args[1].value).startswith("_"):
            found.append(ast.unparse(node))
    return found


def test_model_and_trainer_depend_in_one_direction():
    """model.py -> trainer.py -> train.py -> constants.py, never back: model.py imports only
    public names of the trainer and nothing of train.py; trainer.py, train.py and
    constants.py import nothing of model.py and touch no private attribute of the model."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.join(os.path.dirname(os.path.dirname(here)), "models", "mrcnn")

    def parse(name):
        with open(os.path.join(root, name)) as f:
            return ast.parse(f.read(), name)

    model_tree = parse("model.py")
    model_imports = list(_imports(model_tree))
    for module, name in model_imports:
        assert module != "models.mrcnn.train" and (module, name) != ("models.mrcnn", "train")
        if module == "models.mrcnn.trainer":
            assert name and not name.startswith("_"), name
    assert ("models.mrcnn.trainer", "Trainer") in model_imports
    assert not _private_accesses(model_tree, {"trainer", "_trainer", "Trainer"})
    for name in ("trainer.py", "train.py", "constants.py"):
        tree = parse(name)
        for module, imported in _imports(tree):
            assert module not in ("models.mrcnn.model", "model"), (name, module)
            assert (module, imported) != ("models.mrcnn", "model"), name
            if module.startswith("models.mrcnn."):
                assert imported is None or not imported.startswith("_"), (name, imported)
        assert not _private_accesses(tree, {"model"}), name
    assert not list(_imports(parse("constants.py")))


@pytest.mark.slow
def test_trainer_state_survives_two_train_calls(tmp_path):
    """The model's one Trainer keeps its optimizer, train ops and momentum slots between
    `train` calls: the second stage adds (and initialises) only its new slots."""
    cfg = get_config("tiny", IMAGES_PER_GPU=1, VALIDATION_STEPS=0)
    ds = ToyDataset(2, 64, seed=0)
    model = MaskRCNN("training", cfg, str(tmp_path), seed=0)
    try:
        first = model.train(ds, None, 0.01, 1, "heads", progress=False, steps_per_epoch=1)
        trainer = model.trainer
        optimizer, heads = trainer.optimizer, trainer.train_op("heads")
        slots = trainer.slot_variables()
        assert len(slots) == len(heads.variables) > 0  # one momentum slot per variable
        momentum = model.read_variables(slots)
        assert sum(np.count_nonzero(v) for v in momentum) > 0
        stage4 = trainer.train_op("4+")
        slots4 = trainer.slot_variables()
        assert len(slots4) == len(stage4.variables) > len(slots)
        assert {s.name for s in slots} < {s.name for s in slots4}
        for slot, before, after in zip(slots, momentum, model.read_variables(slots)):
            np.testing.assert_array_equal(after, before, err_msg=slot.name)
        second = model.train(ds, None, 0.01, 2, "4+", progress=False, steps_per_epoch=1)
        assert model.trainer is trainer and trainer.optimizer is optimizer
        assert trainer.train_op("heads") is heads and trainer.train_op("4+") is stage4
        assert [s.name for s in trainer.slot_variables()] == [s.name for s in slots4]
        assert [h["epoch"] for h in first + second] == [1, 2] and model.epoch == 2
        assert trainer.history == first + second and trainer.steps == 2
    finally:
        model.close()

    inference = MaskRCNN("inference", get_config("tiny"), str(tmp_path))
    try:
        with pytest.raises(ValueError, match="mode='training'"):
            inference.train(ds, None, 0.01, 1, "heads")
        with pytest.raises(ValueError, match="mode='training'"):
            inference.loss_tensors
    finally:
        inference.close()


def _uncached_batches(ds, config, rng, count, augmentation=None):
    """The batches batch_iterator yields, built without the ground-truth cache."""
    ids = [i for i in ds.image_ids if data_gen._has_instances(ds, i)]
    order, pos, out = np.array(ids), len(ids), []
    for _ in range(count):
        batch = []
        while len(batch) < config.BATCH_SIZE:
            if pos >= len(order):
                order, pos = rng.permutation(ids), 0
            batch.append(int(order[pos]))
            pos += 1
        out.append(data_gen.build_batch(ds, config, batch, rng, augmentation))
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_ground_truth_cache_gives_the_uncached_batches(flip):
    """Three passes over a 6-image set (cached from the second pass on): every batch equals
    the uncached one bit for bit; with a flip augmentation nothing is cached."""
    config = get_config("tiny")
    ds = ToyDataset(6, 64, seed=3)
    aug = data_gen.HorizontalFlip(0.5) if flip else None
    it = data_gen.batch_iterator(ds, config, np.random.default_rng(7), True, aug)
    got = [next(it) for _ in range(9)]
    want = _uncached_batches(ds, config, np.random.default_rng(7), 9, aug)
    for a, b in zip(got, want):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    cache = data_gen.GroundTruthCache(ds, config, aug)
    assert cache.enabled is (not flip)
    if not flip:
        item = cache.load(0, np.random.default_rng(0))
        assert cache.load(0, np.random.default_rng(1)) is item
        with pytest.raises(ValueError):
            item[0][0, 0, 0] = 1          # read-only: a consumer cannot corrupt later batches


def test_ground_truth_cache_stays_within_its_memory_bound(monkeypatch):
    ds, config = ToyDataset(6, 64, seed=3), get_config("tiny")
    monkeypatch.setattr(data_gen, "GT_CACHE_BYTES", 1000)
    assert not data_gen.GroundTruthCache(ds, config).enabled
    # the estimate (here: images only) allows it, the real items (with their masks) do not
    # all fit: caching stops at the bound
    monkeypatch.setattr(config, "MAX_GT_INSTANCES", 0)
    monkeypatch.setattr(data_gen, "GT_CACHE_BYTES",
                        int(np.prod(config.IMAGE_SHAPE)) * len(ds.image_ids))
    cache = data_gen.GroundTruthCache(ds, config)
    assert cache.enabled
    rng = np.random.default_rng(0)
    for image_id in ds.image_ids:
        item = cache.load(image_id, rng)
        np.testing.assert_array_equal(item[0], data_gen.load_image_gt(ds, config, image_id)[0])
    assert 0 < cache.bytes <= data_gen.GT_CACHE_BYTES and len(cache._items) < len(ds.image_ids)


@pytest.mark.slow
def test_progress_bars_and_lines_count_epochs_out_of_every_stage(tmp_path, monkeypatch, capsys):
    """A staged training (here heads then 4+) counts its epochs the same way in its progress
    bars and its progress lines: 1/2 then 2/2, not the stage's own 1/1 in the bar."""
    import tqdm

    bars = []
    real = tqdm.tqdm

    def recording(*args, **kwargs):
        bars.append(kwargs.get("desc"))
        return real(*args, **dict(kwargs, disable=True))

    monkeypatch.setattr(tqdm, "tqdm", recording)
    # data_dir: an empty folder, so no validation set is read from the default data folder
    cli.train_model_k(str(tmp_path / "no-data"), config="tiny", epochs="1,1", steps_per_epoch=1,
                      log_dir=str(tmp_path), train_dataset=ToyDataset(2, 64, seed=1),
                      val_dataset=None, progress=True)
    lines = [line.split(" (")[0] for line in capsys.readouterr().out.splitlines()
             if line.startswith("K epoch")]
    assert bars == ["epoch 1/2", "epoch 2/2"]
    assert [line.split(":")[0] for line in lines] == ["K epoch 1/2", "K epoch 2/2"]

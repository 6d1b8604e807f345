"""Model K training, checkpoints, PartExtractor and COCO evaluation on a toy data set."""
import os
import re

import numpy as np
import pytest

from mrcnn_config import get_config
from evaluation import model_k as cli
from models.mrcnn import evaluate
from models.mrcnn.extractor import PartExtractor
from models.mrcnn.model import MaskRCNN
from models.mrcnn.toy_data import TOY_CLASSES, ToyDataset

TOY_NAMES = ["BG"] + list(TOY_CLASSES)


def _toy_parts(ds, image_id):
    return frozenset(TOY_NAMES[c] for c in ds.load_mask(image_id)[1])


pytestmark = pytest.mark.slow        # K trained on toy images (up to 1200 steps), evaluated


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """Train the tiny K on 4 toy images until the extractor finds every part (<= 1200 steps)."""
    log_dir = str(tmp_path_factory.mktemp("k_logs"))
    ds = ToyDataset(4, 64, seed=0)
    cfg = get_config("tiny", STEPS_PER_EPOCH=75, LEARNING_RATE=0.02, VALIDATION_STEPS=0)
    model = MaskRCNN("training", cfg, log_dir, seed=0)
    ext = PartExtractor(MaskRCNN("inference", get_config("tiny", IMAGES_PER_GPU=4), log_dir),
                        TOY_NAMES, threshold=0.5)
    images = np.stack([ds.load_image(i) for i in ds.image_ids]).astype(np.float32) / 255.0
    truth = [_toy_parts(ds, i) for i in ds.image_ids]
    history = []
    found = []
    for epoch in range(1, 17):
        lr = cfg.LEARNING_RATE if epoch <= 6 else cfg.LEARNING_RATE / 5
        history += model.train(ds, None, lr, epoch, "all", progress=False)
        if epoch >= 3:
            ext.model.load_weights(history[-1]["checkpoint"])
            found.append(ext.extract(images))
            if found[-1] == truth:
                break
    model.close()
    yield {"ds": ds, "cfg": cfg, "log_dir": log_dir, "history": history, "extractor": ext,
           "images": images, "truth": truth, "found": found,
           "run_dir": os.path.dirname(history[-1]["checkpoint"])}
    ext.close()


def test_training_loss_falls(overfit):
    h = overfit["history"]
    assert len(h) >= 3
    # the fixture stops as soon as every part is found (sometimes after 3 epochs), so the
    # total loss has fallen by at least a quarter, not necessarily more
    assert h[-1]["loss"] < 0.75 * h[0]["loss"]
    for name in ("rpn_class_loss", "mrcnn_class_loss", "mrcnn_mask_loss"):
        assert h[-1][name] < h[0][name], name
    assert all(np.isfinite(r["loss"]) for r in h)


@pytest.mark.slow
def test_overfit_finds_the_parts_of_known_images(overfit):
    ext = overfit["extractor"]
    sets = ext.extract(overfit["images"])
    assert sets == overfit["truth"], "found per epoch: %s" % overfit["found"]
    assert all(isinstance(s, frozenset) for s in sets)
    # a lower threshold can only add parts; the cache returns identical answers by key
    low = ext.extract(list(overfit["images"]), keys=["a", "b", "c", "d"])
    assert all(t <= s for t, s in zip(overfit["truth"], low))
    assert ext.extract(list(overfit["images"][:1]), keys=["a"]) == low[:1]
    # the same key with other pixels (an attacked copy) is detected anew, not served from
    # the cache: a blank image under key "a" must give the blank image's parts
    blank = np.zeros_like(np.asarray(overfit["images"][0]))
    detected = []
    real_detect = ext.detect
    ext.detect = lambda images: (detected.append(len(images)), real_detect(images))[1]
    try:
        ext.extract(list(overfit["images"][:1]), keys=["a"])  # same key, same pixels: cached
        assert detected == []
        assert ext.extract([blank], keys=["a"]) == ext.extract([blank])
        assert detected == [1, 1]  # same key, other pixels: detected, not served from cache
    finally:
        ext.detect = real_detect


def test_checkpoints_atomic_and_resume_from_last(overfit, tmp_path):
    import shutil
    log_dir = str(tmp_path / "logs")
    run_dir = os.path.join(log_dir, os.path.basename(overfit["run_dir"]))
    shutil.copytree(overfit["run_dir"], run_dir)
    files = sorted(os.listdir(run_dir))
    ckpts = [f for f in files if f.startswith("mask_rcnn_tiny_") and f.endswith(".h5")]
    assert ckpts[0] == "mask_rcnn_tiny_0001.h5"
    assert len(ckpts) == len(overfit["history"])
    assert not [f for f in files if f.endswith(".tmp")]
    assert any(f.startswith("events.out.tfevents") for f in files)
    model = MaskRCNN("training", overfit["cfg"], log_dir)
    try:
        model.load_weights(model.find_last(), by_name=True)
        assert model.epoch == len(ckpts)
        assert model.log_dir == run_dir
        more = model.train(overfit["ds"], None, 0.001, model.epoch + 1, "heads", progress=False,
                           steps_per_epoch=2)
        assert more[-1]["epoch"] == len(ckpts) + 1
    finally:
        model.close()


def test_coco_evaluation_on_tiny_split(overfit, tmp_path):
    ds = overfit["ds"]
    metrics = cli.evaluate_model_k(config=get_config("tiny"), checkpoint="last",
                                   log_dir=overfit["log_dir"], dataset=ds,
                                   class_names=TOY_NAMES, results_dir=str(tmp_path),
                                   visualize=True)
    for kind in ("bbox", "segm"):
        assert 0.0 <= metrics[kind]["mAP"] <= metrics[kind]["mAP50"] <= 1.0
    assert metrics["segm"]["mAP50"] > 0.5 and metrics["matterport_mAP50"] > 0.5
    assert metrics["images"] == 4 and metrics["images_per_second"] > 0
    assert os.path.isfile(tmp_path / "eval_test.json")
    assert len(list((tmp_path / "visualize_test").glob("*.png"))) == 4
    assert "mAP@.5" in cli.format_metrics(metrics)
    parts = {r["part"]: r for r in metrics["per_part"]}
    truth = set().union(*overfit["truth"])
    assert set(parts) == truth and all(r["instances"] >= 1 for r in parts.values())
    assert np.mean([r["mask_AP50"] for r in parts.values()]) == pytest.approx(
        metrics["segm"]["mAP50"], abs=1e-6)             # COCO's mAP is the mean over parts


def test_k_page_shows_per_part_ap_and_ks_parts_beside_the_annotated_ones(overfit, tmp_path,
                                                                         monkeypatch):
    from evaluation.report import k_page

    ds = overfit["ds"]
    cli.evaluate_model_k(config=get_config("tiny"), checkpoint="last",
                         log_dir=overfit["log_dir"], dataset=ds, class_names=TOY_NAMES,
                         results_dir=str(tmp_path))
    import data.coco_parts
    monkeypatch.setattr(data.coco_parts, "load_parts_dataset", lambda data_dir, split: ds)
    html = k_page.build_k_page(str(tmp_path))
    assert html == k_page.build_k_page(str(tmp_path))          # the same folder, the same page
    for name in set().union(*overfit["truth"]):
        assert "<td>%s</td>" % name in html                      # its AP@.5 row
    assert html.count("<figure>") == 2 * len(ds.image_ids)
    shown = [int(n) for n in re.findall(r"<figcaption>K: (\d+) parts", html)]
    assert len(shown) == len(ds.image_ids) and sum(shown) >= len(ds.image_ids)


def test_coco_stats_perfect_and_wrong_detections():
    ds = ToyDataset(3, 64, seed=7)
    ids = list(ds.image_ids)
    gt = evaluate.build_coco_gt(ds, ids, 4)
    perfect, wrong = [], []
    for i in ids:
        masks, class_ids = ds.load_mask(i)
        from models.mrcnn.utils import extract_bboxes
        r = {"rois": extract_bboxes(masks), "class_ids": class_ids,
             "scores": np.ones(len(class_ids)), "masks": masks}
        perfect += evaluate.detections_to_coco(i, r)
        wrong += evaluate.detections_to_coco(i, dict(r, class_ids=class_ids % 3 + 1))
    for kind in ("bbox", "segm"):
        assert evaluate._coco_stats(gt, perfect, kind, ids)["mAP"] == pytest.approx(1.0)
        assert evaluate._coco_stats(gt, wrong, kind, ids)["mAP50"] == pytest.approx(0.0)
        assert evaluate._coco_stats(gt, [], kind, ids)["mAP"] == 0.0
    for found, want in ((perfect, 1.0), (wrong, 0.0)):
        rows = evaluate.per_part_ap(gt, evaluate._coco_stats(gt, found, "bbox", ids),
                                    evaluate._coco_stats(gt, found, "segm", ids), TOY_NAMES)
        assert {r["part"] for r in rows} == {TOY_NAMES[c] for i in ids
                                             for c in ds.load_mask(i)[1]}
        assert all(r["mask_AP50"] == pytest.approx(want) and r["box_AP50"] == pytest.approx(want)
                   for r in rows)


def test_extractor_bad_input(overfit):
    ext = overfit["extractor"]
    assert ext.kind == "k"
    assert ext.extract(np.zeros((0, 64, 64, 3), np.float32)) == []
    assert ext.extract([]) == []
    with pytest.raises(ValueError, match="channel"):
        ext.extract(np.zeros((2, 64, 64, 4), np.float32))
    with pytest.raises(ValueError, match="channel"):
        ext.extract([np.zeros((64, 64), np.float32)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ext.extract(np.full((1, 64, 64, 3), 255.0, np.float32))
    with pytest.raises(ValueError, match="keys"):
        ext.extract(overfit["images"][:2], keys=["only-one"])
    # any image size is accepted (resized as matterport does)
    sizes = [(40, 90), (128, 70)]
    out = ext.extract([np.full(s + (3,), 0.4, np.float32) for s in sizes])
    assert len(out) == 2 and all(isinstance(s, frozenset) for s in out)


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python main.py --model K"):
        PartExtractor.from_checkpoint("last", get_config("tiny"), model_dir=str(tmp_path),
                                      class_names=TOY_NAMES)
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        PartExtractor.from_checkpoint(str(tmp_path / "nope.h5"), get_config("tiny"),
                                      model_dir=str(tmp_path), class_names=TOY_NAMES)


def test_from_checkpoint_batches_any_count(overfit):
    ext = PartExtractor.from_checkpoint("last", get_config("tiny"), model_dir=overfit["log_dir"],
                                        threshold=0.5, batch_size=3, class_names=TOY_NAMES)
    try:
        images = list(overfit["images"]) * 2
        assert ext.extract(images) == overfit["extractor"].extract(images)
    finally:
        ext.close()


def test_cli_epoch_parsing_and_weights_errors(tmp_path):
    cfg = get_config("synthetic")
    assert cli.parse_epochs("1,2,3", cfg) == (1, 2, 3, 0)
    assert cli.parse_epochs(None, cfg) == cli.DEFAULT_EPOCHS["synthetic"]
    with pytest.raises(ValueError, match="--k-epochs"):
        cli.parse_epochs("a,b", cfg)
    with pytest.raises(ValueError, match="--k-epochs"):
        cli.parse_epochs("1,-1", cfg)
    model = MaskRCNN("inference", get_config("tiny"), str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError, match="never downloads"):
            cli.load_initial_weights(model, "coco", str(tmp_path))
        with pytest.raises(FileNotFoundError, match="python main.py --model K"):
            cli.load_initial_weights(model, "last", str(tmp_path))
        assert cli.load_initial_weights(model, "none", str(tmp_path)) == "none"
    finally:
        model.close()


def test_run_model_k_trains_then_evaluates(tmp_path, monkeypatch):
    """main.py's entry point with its argparse options (data replaced by the toy set)."""
    import data.synthetic
    from evaluation.options import build_parser

    monkeypatch.setattr(data.synthetic, "ensure_dataset", lambda *a, **k: {})
    monkeypatch.setattr(cli, "load_parts_dataset", lambda d, split: ToyDataset(4, 64, seed=1))
    args = build_parser().parse_args(["--k-config", "tiny", "--k-epochs", "0,0,1", "--k-steps", "3",
                              "--k-log-dir", str(tmp_path / "logs"),
                              "--k-results-dir", str(tmp_path / "res"),
                              "--k-attack-steps", "2"])
    out = cli.run_model_k_report(args)
    # --model K's evaluation attacks K at the default budgets 4/255 and 8/255
    assert set(out["eval"]["under_attack"]) == {"4", "8"}
    assert out["train"]["checkpoint"].endswith("mask_rcnn_tiny_0001.h5")
    assert os.path.isfile(out["train"]["checkpoint"])
    assert out["eval"]["images"] == 4 and out["eval"]["checkpoint"] == out["train"]["checkpoint"]
    assert os.path.isfile(tmp_path / "res" / "eval_test.json")
    assert os.path.isfile(os.path.join(out["train"]["log_dir"], "train_summary.json"))
    assert cli.run_model_k(args, k_eval_only=True, k_eval_limit=2, k_attack_eps="none") == 0
    again = cli.run_model_k_report(args, k_attack_eps="none")  # evaluates, does not retrain
    assert "under_attack" not in again["eval"]
    assert "train" not in again
    assert again["eval"]["checkpoint"] == out["train"]["checkpoint"]
    retrained = cli.run_model_k_report(args, k_retrain=True, k_attack_eps="none")
    assert retrained["train"]["checkpoint"] != out["train"]["checkpoint"]


def test_package_exports_for_the_defense(overfit):
    import models.mrcnn as k
    assert k.find_k_checkpoint(overfit["log_dir"], "tiny").endswith(".h5")
    with pytest.raises(FileNotFoundError, match="python main.py --model K"):
        k.find_k_checkpoint(os.path.join(overfit["log_dir"], "none"))
    ext = k.PartExtractor.from_checkpoint("last", get_config("tiny"),
                                          model_dir=overfit["log_dir"], class_names=TOY_NAMES)
    try:
        assert ext.checkpoint == k.find_k_checkpoint(overfit["log_dir"], "tiny")
    finally:
        ext.close()


def test_same_seed_same_k_and_another_seed_another_k(tmp_path):
    """K trained twice with one seed ends with the same weights, bit for bit (seeded
    initializers, data order, augmentation and ROI sampling, and TensorFlow's op determinism,
    which tfcompat turns on); another seed starts from other weights."""
    ds = ToyDataset(4, 64, seed=0)
    cfg = get_config("tiny", STEPS_PER_EPOCH=4, LEARNING_RATE=0.02, VALIDATION_STEPS=0)

    def train(seed):
        model = MaskRCNN("training", cfg, str(tmp_path / ("s%d" % seed)), seed=seed)
        try:
            model.train(ds, None, 0.02, 1, "all", progress=False, seed=seed)
            return [v.copy() for v in model.read_variables(model.keras_model.weights)]
        finally:
            model.close()

    first, again = train(0), train(0)
    assert len(first) == len(again) and all(np.array_equal(a, b) for a, b in zip(first, again))
    other = MaskRCNN("training", cfg, str(tmp_path / "s1"), seed=1)   # another seed, untrained
    try:
        other_init = [v.copy() for v in other.read_variables(other.keras_model.weights)]
    finally:
        other.close()
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_init))


def test_k_evaluated_under_pgd_on_its_own_losses(overfit, tmp_path, monkeypatch):
    """--model K's robust mAP: the same COCO evaluation on the split's images attacked by PGD
    on K's training losses; the attacked images stay in the ball, the attack hurts the
    (non-robust) overfit K, and the same seed gives the same numbers."""
    ds = overfit["ds"]
    kwargs = dict(config=get_config("tiny"), checkpoint="last", log_dir=overfit["log_dir"],
                  dataset=ds, class_names=TOY_NAMES, results_dir=str(tmp_path),
                  attack_eps=(4, 16), attack_steps=5, seed=3)
    metrics = cli.evaluate_model_k(**kwargs)
    clean = metrics["segm"]["mAP50"]
    assert set(metrics["under_attack"]) == {"4", "16"}
    for eps, attacked in metrics["under_attack"].items():
        assert attacked["attack"]["eps"] == float(eps) and attacked["attack"]["steps"] == 5
        assert 0 < attacked["attack"]["max_linf"] <= float(eps)
        assert attacked["images"] == metrics["images"]
        assert set(attacked["part_sets"]) >= {"f1_micro", "f1_samples"}
    strong = metrics["under_attack"]["16"]
    assert strong["segm"]["mAP50"] < clean - 0.1, (clean, strong["segm"]["mAP50"])
    assert strong["part_sets"]["f1_micro"] <= metrics["part_sets"]["f1_micro"]
    again = cli.evaluate_model_k(**kwargs)["under_attack"]
    assert again["16"]["segm"] == strong["segm"] and again["4"]["part_sets"] == \
        metrics["under_attack"]["4"]["part_sets"]
    assert "under PGD eps 16/255" in cli.format_metrics(metrics)
    from evaluation.report import k_page          # K's page shows them too
    import data.coco_parts
    monkeypatch.setattr(data.coco_parts, "load_parts_dataset", lambda data_dir, split: ds)
    html = k_page.build_k_page(str(tmp_path))
    assert "under PGD eps 16/255 on K&#x27;s losses" in html or \
        "under PGD eps 16/255 on K's losses" in html
    assert "%.3f" % strong["segm"]["mAP50"] in html

"""The paper's configurations, not only the CPU ones: M as ResNet50 / DenseNet121 at the
original's 150-px input, and K with the original ``parts`` configuration (ResNet-101 FPN,
1024-px images), each one training step and one prediction on this CPU (random weights: no
download).  Seconds per image of K's ``parts`` configuration: ``bench/bench_k_parts.py``."""
import numpy as np
import pytest

import tfcompat
from mrcnn_config import get_config
from models.classifier import build_classifier
from models.mrcnn.extractor import PartExtractor
from models.mrcnn.model import MaskRCNN
from models.mrcnn.toy_data import TOY_CLASSES, ToyDataset
from models.train_classifier import TrainConfig, train_classifier

tf, keras = tfcompat.import_tf()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet50", "densenet121"])
def test_paper_m_trains_one_step_and_predicts_at_150_px(arch, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 150, 150, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 0])
    model = build_classifier(arch, 3, 150, weights=None)
    before = [w.copy() for w in model.get_weights()]
    state = train_classifier(model, x, y, x, y, str(tmp_path), TrainConfig(
        epochs=1, batch_size=4), progress=False, log=lambda s: None)
    assert state["done"] and state["epoch"] == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    logits = model(x.astype(np.float32) / 255.0, training=False).numpy()
    assert logits.shape == (4, 3) and np.all(np.isfinite(logits))


@pytest.mark.slow
def test_k_parts_config_trains_one_step_and_predicts(tmp_path):
    """ResNet-101 FPN at 1024 px, as the paper's K (toy classes in place of the 44 parts:
    only the heads' widths differ)."""
    names = ["BG"] + list(TOY_CLASSES)
    ds = ToyDataset(2, 1024, seed=0)
    cfg = get_config("parts", NUM_CLASSES=len(names), IMAGES_PER_GPU=1, STEPS_PER_EPOCH=1,
                     VALIDATION_STEPS=0)
    assert cfg.BACKBONE == "resnet101" and tuple(cfg.IMAGE_SHAPE[:2]) == (1024, 1024)
    model = MaskRCNN("training", cfg, str(tmp_path), seed=0)
    try:
        history = model.train(ds, None, 1e-3, 1, "heads", progress=False)
    finally:
        model.close()
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    infer = MaskRCNN("inference", get_config("parts", NUM_CLASSES=len(names),
                                             IMAGES_PER_GPU=1), str(tmp_path))
    infer.load_weights(history[0]["checkpoint"])
    extractor = PartExtractor(infer, names)
    try:
        image = ds.load_image(ds.image_ids[0]).astype(np.float32) / 255.0
        parts = extractor.extract(image[None])
        assert len(parts) == 1 and parts[0] <= set(names[1:])
    finally:
        extractor.close()

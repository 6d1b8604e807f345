"""K (TF1-style graph + session) and M (eager tf-keras) in one process, as UnMask runs them."""
import numpy as np

import tfcompat

tf, keras = tfcompat.import_tf()

from mrcnn_config import get_config  # noqa: E402
from models.classifier import build_classifier  # noqa: E402
from models.mrcnn.keras_classes import restore_v2_keras_classes  # noqa: E402
from models.mrcnn.model import MaskRCNN  # noqa: E402


def test_eager_model_still_works_after_k_graph_is_built(tmp_path):
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    m = build_classifier("mobilenetv2_050", 3, input_size=32)
    before = m(x).numpy()
    k = MaskRCNN("inference", get_config("tiny"), str(tmp_path))
    try:
        assert restore_v2_keras_classes() == 0, "K left tf-keras classes on their v1 bases"
        np.testing.assert_allclose(m(x).numpy(), before, rtol=1e-5, atol=1e-5)
        # gradients through M (what the attacks need) and a new eager model also work
        with tf.GradientTape() as tape:
            xt = tf.constant(x)
            tape.watch(xt)
            loss = tf.reduce_sum(m(xt))
        assert np.all(np.isfinite(tape.gradient(loss, xt).numpy()))
        assert build_classifier("mobilenetv2_050", 2, input_size=32)(x).shape == (2, 2)
        # and K still runs in its own session afterwards
        image = np.random.default_rng(1).random((64, 64, 3))
        out = k.detect([image] * k.config.BATCH_SIZE)
        assert len(out) == k.config.BATCH_SIZE and "class_ids" in out[0]
    finally:
        k.close()

"""Model M, its training (resume, best checkpoint), adversarial training and the evaluation
pipeline (metrics schema, resume after interruption) on a tiny synthetic data set."""
import json
import os

import numpy as np
import pytest

import tfcompat

tf, keras = tfcompat.import_tf()

from data.knowledge import get_class_set  # noqa: E402
from evaluation.store import attack_store, records  # noqa: E402
from evaluation import run as ev  # noqa: E402
from evaluation.comparison import Comparison  # noqa: E402
from evaluation.config import EvalConfig  # noqa: E402
from evaluation.options import parse_vectors  # noqa: E402
from defense.adversarial_training import pgd_perturb, train_adversarial  # noqa: E402
from evaluation.schema import validate_metrics  # noqa: E402
from models.classifier import ARCHITECTURES, UnitToBackbone, build_classifier, \
    get_architecture  # noqa: E402
from models.train_classifier import TrainConfig, accuracy, train_classifier  # noqa: E402

SIZE = 32


TINY_DATA = dict(seed=3, per_class=(16, 6, 6))


def _separable(n=64, size=SIZE, seed=0):
    """Two easy classes: dark vs bright images (uint8)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = (rng.uniform(0, 0.4, (n, size, size, 3)) + 0.5 * y[:, None, None, None]) * 255
    return x.astype(np.uint8), y.astype(np.int64)


# ----------------------------------------------------------------------------- model M

@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_maps_unit_images_to_logits(arch):
    model = build_classifier(arch, 3, input_size=SIZE)
    out = model(np.random.default_rng(0).random((2, SIZE, SIZE, 3), np.float32)).numpy()
    assert out.shape == (2, 3)
    assert np.all(np.isfinite(out))
    assert not np.allclose(out.sum(axis=1), 1.0), "M must return logits, not probabilities"


def test_same_seed_same_initial_weights_whatever_the_global_random_state():
    """tf-keras seeds unseeded initializers from Python's `random`: M must come out the same
    for a seed even when that state differs (as it does between two processes)."""
    import random

    weights = []
    for state in (1, 2):
        random.seed(state)
        np.random.seed(state)
        tf.random.set_seed(state)
        weights.append(build_classifier("mobilenetv2_050", 3, SIZE, seed=7).get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    other = build_classifier("mobilenetv2_050", 3, SIZE, seed=8).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], other))


def test_preprocessing_inside_model_matches_keras_conventions():
    x = np.random.default_rng(1).random((2, 8, 8, 3)).astype(np.float32)
    caffe = UnitToBackbone("caffe")(x).numpy()
    ref = keras.applications.resnet50.preprocess_input(x * 255.0)
    np.testing.assert_allclose(caffe, ref, atol=1e-3)
    torch = UnitToBackbone("torch")(x).numpy()
    np.testing.assert_allclose(torch, keras.applications.densenet.preprocess_input(x * 255.0),
                               atol=1e-4)
    np.testing.assert_allclose(UnitToBackbone("tf")(x).numpy(),
                               keras.applications.mobilenet_v2.preprocess_input(x * 255.0),
                               atol=1e-5)


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="valid: .*resnet50"):
        get_architecture("alexnet")
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier("mobilenetv2_050", 1)
    with pytest.raises(ValueError, match="imagenet"):
        build_classifier("mobilenetv2_050", 3, SIZE, weights="coco")


# ----------------------------------------------------------------------------- training

@pytest.mark.slow
def test_training_writes_best_checkpoint_and_reuses_it(tmp_path):
    x, y = _separable()
    model = build_classifier("mobilenetv2_050", 2, SIZE)
    cfg = TrainConfig(epochs=3, batch_size=16, learning_rate=0.01)
    state = train_classifier(model, x, y, x[:32], y[:32], str(tmp_path), cfg, progress=False,
                             log=lambda s: None)
    assert state["done"] and state["epoch"] == 3
    for name in ("best.h5", "last.h5", "state.json"):
        assert os.path.isfile(tmp_path / name)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    acc = accuracy(model, x[:32], y[:32])
    assert acc == pytest.approx(state["best_val_acc"])  # the best epoch's weights are loaded
    logs = []
    again = build_classifier("mobilenetv2_050", 2, SIZE, seed=5)
    train_classifier(again, x, y, x[:32], y[:32], str(tmp_path), cfg, progress=False,
                     log=logs.append)
    assert any("loaded trained model" in m for m in logs)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def _weights(path, build=None):
    model = build() if build else build_classifier("mobilenetv2_050", 2, SIZE, seed=9)
    model.load_weights(str(path))
    return model.get_weights()


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


@pytest.mark.slow
def test_interrupted_training_resumes_from_last_epoch_bit_for_bit(tmp_path):
    """Killed in epoch 2 and restarted: epoch 2 only, and the same weights, bit for bit, as
    a run that was never interrupted (momentum, dropout masks and data order are restored,
    not restarted)."""
    x, y = _separable()
    cfg = TrainConfig(epochs=2, batch_size=32, learning_rate=0.01)
    calls = {"n": 0, "index": []}

    def crash_in_second_epoch(xb, yb, batch_index):
        calls["n"] += 1
        calls["index"].append(batch_index)
        if calls["n"] > 2:  # 64 images / 32 = 2 batches per epoch
            raise KeyboardInterrupt
        return xb

    model = build_classifier("mobilenetv2_050", 2, SIZE)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(model, x, y, x, y, str(tmp_path / "b"), cfg,
                         perturb=crash_in_second_epoch, progress=False, log=lambda s: None)
    assert calls["index"] == [0, 1, 2], "batch_index counts from the start of training"
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["epoch"] == 1 and not state["done"]
    assert state["recipe"] == cfg.recipe() and len(state["resume_sha256"]) == 64
    logs = []
    train_classifier(build_classifier("mobilenetv2_050", 2, SIZE), x, y, x, y,
                     str(tmp_path / "b"), cfg, progress=False, log=logs.append)
    assert any("resuming training" in m and "epoch 1" in m for m in logs)
    assert sum("epoch " in m and "/2:" in m for m in logs) == 1  # epoch 2 only
    assert json.loads((tmp_path / "b" / "state.json").read_text())["done"]

    train_classifier(build_classifier("mobilenetv2_050", 2, SIZE), x, y, x, y,
                     str(tmp_path / "a"), cfg, progress=False, log=lambda s: None)
    for name in ("last.h5", "best.h5"):
        _assert_same_weights(_weights(tmp_path / "a" / name), _weights(tmp_path / "b" / name))
    a, b = (json.loads((tmp_path / d / "state.json").read_text()) for d in "ab")
    assert a == b


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["before the state", "before the renames"])
def test_a_kill_inside_an_epoch_save_is_undone_or_finished(tmp_path, monkeypatch, stop):
    """Saving an epoch is a transaction: killed before ``state.json`` is written, the next
    run discards the epoch's files and trains it again; killed after, it finishes the
    renames.  Either way the result is the uninterrupted run's, bit for bit."""
    import models.train_classifier as tc

    x, y = _separable(n=32)
    cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=0.01)
    train_classifier(_small_m(), x, y, x, y, str(tmp_path / "a"), cfg, progress=False,
                     log=lambda s: None)

    real_write, real_replace = tc.write_json_atomic, os.replace
    seen = {"states": 0}

    def write_state(path, obj, **kw):
        seen["states"] += 1
        if seen["states"] == 2 and stop == "before the state":
            raise KeyboardInterrupt            # epoch 2's files written, its state not
        return real_write(path, obj, **kw)

    def replace(src, dst):
        if seen["states"] == 2 and stop == "before the renames" and src.endswith(".next"):
            raise KeyboardInterrupt            # epoch 2's state written, no file renamed
        return real_replace(src, dst)

    monkeypatch.setattr(tc, "write_json_atomic", write_state)
    monkeypatch.setattr(tc.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(_small_m(), x, y, x, y, str(tmp_path / "b"), cfg, progress=False,
                         log=lambda s: None)
    monkeypatch.undo()
    assert any(f.endswith(".next") for f in os.listdir(tmp_path / "b"))
    logs = []
    train_classifier(_small_m(), x, y, x, y, str(tmp_path / "b"), cfg, progress=False,
                     log=logs.append)
    expected = ("removed" if stop == "before the state" else "finished the interrupted save")
    assert any(expected in m for m in logs), logs
    assert not any(f.endswith(".next") for f in os.listdir(tmp_path / "b"))
    for name in ("last.h5", "best.h5"):
        _assert_same_weights(_weights(tmp_path / "a" / name, _small_m),
                             _weights(tmp_path / "b" / name, _small_m))


def _small_m():
    """A small M with M's kinds of layers (batch norm, dropout drawing from a generator)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3, strides=2)(inp))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    h = keras.layers.Dropout(0.2, seed=0, force_generator=True)(h)
    return keras.Model(inp, keras.layers.Dense(2)(h))


@pytest.mark.slow
def test_a_folder_trained_otherwise_is_refused_not_reused(tmp_path):
    """M's folder remembers its training settings and images: another --lr or other images
    are refused with the folder named (main.py gives other settings a folder of their own)."""
    from models.train_classifier import CheckpointError

    x, y = _separable(n=32)
    cfg = TrainConfig(epochs=1, batch_size=16, learning_rate=0.01)
    train_classifier(build_classifier("mobilenetv2_050", 2, SIZE), x, y, x, y, str(tmp_path),
                     cfg, progress=False, log=lambda s: None)
    before = (tmp_path / "best.h5").read_bytes()
    other = TrainConfig(epochs=1, batch_size=16, learning_rate=0.02)
    with pytest.raises(CheckpointError, match=r"other settings \(learning_rate 0.01 there, "
                                              r"0.02 now\)"):
        train_classifier(build_classifier("mobilenetv2_050", 2, SIZE), x, y, x, y,
                         str(tmp_path), other, progress=False, log=lambda s: None)
    x2 = x.copy()
    x2[0, 0, 0, 0] ^= 1
    with pytest.raises(CheckpointError, match="other images"):
        train_classifier(build_classifier("mobilenetv2_050", 2, SIZE), x2, y, x, y,
                         str(tmp_path), cfg, progress=False, log=lambda s: None)
    assert (tmp_path / "best.h5").read_bytes() == before
    assert TrainConfig().folder_suffix() == ""
    assert other.folder_suffix() == "_bs16_lr0.02"
    assert TrainConfig(seed=1, batch_size=64).folder_suffix() == "_bs64_seed1"


def test_bad_training_config():
    with pytest.raises(ValueError, match="--epochs"):
        TrainConfig(epochs=0).validate()


# ----------------------------------------------------------------------------- AT

@pytest.mark.slow
def test_adversarial_perturbation_stays_in_ball_and_training_step_updates(tmp_path):
    x, y = _separable(n=32)
    model = build_classifier("mobilenetv2_050", 2, SIZE)
    perturb = pgd_perturb(model, eps=4, steps=3, step_size=2)
    xf = tf.convert_to_tensor(x.astype(np.float32) / 255.0)
    adv = perturb(xf, tf.convert_to_tensor(y), 0).numpy()
    assert np.max(np.abs(adv - xf.numpy())) <= 4 / 255 + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    assert np.max(np.abs(adv - xf.numpy())) > 1 / 255  # it did move the images
    data = {"x_train": x, "y_train": y, "x_val": x, "y_val": y}
    at = train_adversarial("mobilenetv2_050", 2, SIZE, data, str(tmp_path / "at"),
                           TrainConfig(epochs=1, batch_size=16), eps=4, steps=2,
                           log=lambda s: None, progress=False)
    fresh = build_classifier("mobilenetv2_050", 2, SIZE)
    changed = [not np.array_equal(a, b) for a, b in zip(at.get_weights(), fresh.get_weights())]
    assert any(changed)
    assert os.path.isfile(tmp_path / "at" / "best.h5")


@pytest.mark.slow
def test_training_step_learns_from_the_perturbed_batch(tmp_path):
    """``perturb``'s output, not the clean batch, is what the gradient step trains on: with a
    perturbation that maps every image to black, M learns nothing about brightness and its
    weights end up elsewhere than with the identity perturbation (same seed, same batches)."""
    x, y = _separable(n=32)
    seen = []

    def identity(xb, yb, batch_index):
        seen.append((xb.shape[0], yb.shape[0]))
        return xb

    def black(xb, yb, batch_index):
        return tf.zeros_like(xb)

    weights = {}
    for name, perturb in (("identity", identity), ("black", black)):
        keras.utils.set_random_seed(0)
        model = build_classifier("mobilenetv2_050", 2, SIZE, seed=0)
        train_classifier(model, x, y, x, y, str(tmp_path / name),
                         TrainConfig(epochs=1, batch_size=16), perturb=perturb,
                         log=lambda s: None, progress=False)
        weights[name] = model.get_weights()
    assert seen == [(16, 16), (16, 16)], "perturb must see every training batch once"
    logits = weights["identity"][-1], weights["black"][-1]   # the head's bias
    assert not np.allclose(*logits)


@pytest.mark.slow
def test_line_search_trains_one_model_per_eps_and_picks_the_best(tmp_path):
    from defense.adversarial_training import line_search

    x, y = _separable(n=32)
    data = {"x_train": x, "y_train": y, "x_val": x, "y_val": y}
    out = line_search("mobilenetv2_050", 2, SIZE, data, str(tmp_path / "m"),
                      TrainConfig(epochs=1, batch_size=16), vectors=[("fgsm", 8)],
                      eps_values=(1, 4), log=lambda s: None, progress=False)
    assert set(out["results"]) == {1, 4}
    means = {e: r["mean"] for e, r in out["results"].items()}
    assert out["best_eps"] == max(means, key=means.get)
    for e, r in out["results"].items():
        assert 0 <= r["benign"] <= 1 and r["mean"] == pytest.approx(r["fgsm_8"])
        assert os.path.isfile(tmp_path / ("m_at_eps%g" % e) / "best.h5")
    record = json.loads((tmp_path / "m_at_line_search.json").read_text())
    assert record["best_eps"] == out["best_eps"] and set(record["results"]) == {"1", "4"}
    assert record["vectors"] == [["fgsm", 8]]


# ----------------------------------------------------------------------------- evaluation

def _config(data_dir, tmp_path, **kw):
    base = dict(class_set=get_class_set("CS3a"), data_dir=data_dir, input_size=SIZE,
                train=TrainConfig(epochs=1, batch_size=16, learning_rate=0.01),
                vectors=(("pgd_linf", 8), ("fgsm", 8)), n_test=9, attack_batch=8,
                results_dir=str(tmp_path / "results"),
                checkpoint_dir=str(tmp_path / "ckpt"), progress=False, extractor="oracle")
    base.update(kw)
    return EvalConfig(**base)


@pytest.mark.slow
def test_evaluation_writes_valid_report_and_resumes(tiny_data, tmp_path, monkeypatch):
    cfg = _config(tiny_data, tmp_path)
    calls = []
    real_run_attack = attack_store.run_attack

    def flaky_run_attack(model, x, y, name, **kw):
        calls.append(name)
        if name == "fgsm":
            raise KeyboardInterrupt  # interrupted during the second vector
        return real_run_attack(model, x, y, name, **kw)

    monkeypatch.setattr(attack_store, "run_attack", flaky_run_attack)
    with pytest.raises(KeyboardInterrupt):
        ev.run_evaluation(cfg, log=lambda s: None)
    saved = os.path.join(cfg.out_dir, "vectors", "attacks", "m")
    assert sorted(os.listdir(saved)) == ["test-pgd_linf_8.npz"]

    calls.clear()
    monkeypatch.setattr(attack_store, "run_attack", lambda model, x, y, name, **kw: (
        calls.append(name), real_run_attack(model, x, y, name, **kw))[1])
    metrics = ev.run_evaluation(cfg, log=lambda s: None)
    assert calls == ["fgsm"], "the saved pgd_linf vector must be reused, not recomputed"
    validate_metrics(metrics)
    assert metrics["extractor"] == "oracle" and metrics["class_set"] == "cs3-1"
    assert [(a["attack"], a["eps"]) for a in metrics["attacks"]] == [("pgd_linf", 8),
                                                                     ("fgsm", 8)]
    assert all(a["n_attacked"] == 9 for a in metrics["attacks"])
    assert metrics["benign"]["acc_at"] is None
    on_disk = json.loads(open(os.path.join(cfg.out_dir, "metrics.json")).read())
    assert on_disk == json.loads(json.dumps(metrics))
    names = ["table_iv.md", "table_iii.md", "fig4.png", "fig4.pdf", "summary.txt"]
    if any(a["n_successful"] for a in metrics["attacks"]):
        names += ["roc.png", "roc.pdf"]
    for name in names:
        assert os.path.getsize(os.path.join(cfg.out_dir, name)) > 0
    assert "oracle" in open(os.path.join(cfg.out_dir, "table_iv.md")).read().lower()


@pytest.mark.slow
def test_changed_setting_invalidates_saved_vectors(tiny_data, tmp_path, monkeypatch):
    cfg = _config(tiny_data, tmp_path, vectors=(("pgd_linf", 8),))
    ev.run_evaluation(cfg, log=lambda s: None)
    calls = []
    real_run_attack = attack_store.run_attack
    monkeypatch.setattr(attack_store, "run_attack", lambda model, x, y, name, **kw: (
        calls.append(name), real_run_attack(model, x, y, name, **kw))[1])
    ev.run_evaluation(_config(tiny_data, tmp_path, vectors=(("pgd_linf", 8),), n_test=6),
                      log=lambda s: None)
    assert calls == ["pgd_linf"], "a different test subset must not reuse the saved vector"


def test_vector_fingerprint_covers_the_attack_configuration(tiny_data, tmp_path, monkeypatch):
    """A saved vector is recomputed when a registry default (steps, step size, random start)
    or the attack batch size (random starts are seeded per batch) changes."""
    import attacks.registry as registry

    cfg = _config(tiny_data, tmp_path)
    base = records.vector_fingerprint(cfg, {"m": "x"}, "pgd_linf", 8.0)
    assert base["attack_config"]["steps"] == 20 and base["attack_config"]["step_size"] == 2.0
    assert records.vector_fingerprint(_config(tiny_data, tmp_path, attack_batch=16), {"m": "x"},
                                 "pgd_linf", 8.0) != base
    spec = registry.ATTACKS["pgd_linf"]
    monkeypatch.setitem(registry.ATTACKS, "pgd_linf",
                        registry.AttackSpec(spec.name, spec.fn, spec.norm, spec.description,
                                            spec.default_eps, 10, spec.step_rule,
                                            extra_defaults=spec.extra_defaults))
    assert records.vector_fingerprint(cfg, {"m": "x"}, "pgd_linf", 8.0) != base
    assert json.loads(json.dumps(base)) == base   # survives the JSON round trip of the cache


def test_without_a_trained_k_the_oracle_is_used_and_the_run_says_so(tiny_data, tmp_path):
    logs = []
    cfg = _config(tiny_data, tmp_path, extractor=None, k_log_dir=str(tmp_path / "no_k"))
    data = ev.load_data(cfg, log=lambda s: None)
    kind, ex_val, ex_test = ev.make_extractors(cfg, data, log=logs.append)
    assert kind == "oracle"
    assert any("no trained K" in m and "python main.py --model K" in m for m in logs)
    assert any("ORACLE" in m for m in logs)
    parts = ex_test.extract(data["x_test"][:2].astype(np.float32) / 255.0,
                            keys=data["splits"]["test"].keys[:2])
    assert all(isinstance(p, frozenset) and p for p in parts)


def test_the_evaluation_looks_for_k_of_its_k_config(tiny_data, tmp_path):
    """A K trained with ``--k-config parts`` is found by an evaluation with that K config, and
    not taken for the synthetic K (whose weights it could not load)."""
    from data.fileio import write_json_atomic
    from mrcnn_config import get_config

    run = tmp_path / "k" / "parts20260101T0000"
    run.mkdir(parents=True)
    write_json_atomic(str(run / "config.json"), get_config("parts").to_dict())
    (run / "mask_rcnn_parts_0001.h5").write_bytes(b"")
    logs = []
    kinds = {name: ev._auto_extractor(_config(tiny_data, tmp_path, extractor=None,
                                              k_log_dir=str(tmp_path / "k"), k_config=name),
                                      logs.append)
             for name in ("parts", "synthetic")}
    assert kinds == {"parts": "k", "synthetic": "oracle"}
    assert any("no trained K" in m for m in logs)


def test_extractor_k_without_a_trained_k_says_how_to_train_it(tiny_data, tmp_path):
    cfg = _config(tiny_data, tmp_path, extractor="k", k_log_dir=str(tmp_path / "no_k"))
    data = ev.load_data(cfg, log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="python main.py --model K"):
        ev.make_extractors(cfg, data, log=lambda s: None)


def test_oracle_without_parts_file_says_how_to_fix(tiny_data, tmp_path):
    cfg = _config(tiny_data, tmp_path)
    data = ev.load_data(cfg, log=lambda s: None)
    data["splits"]["val"].root = str(tmp_path / "nowhere" / "val")
    with pytest.raises(FileNotFoundError, match="--extractor k"):
        ev.make_extractors(cfg, data, log=lambda s: None)


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args, message", [
    (("--model", "M", "--classset", "CS9z"), "valid names: CS3a"),
    (("--model", "M", "--attacks", "deepfool:8"), "pgd_linf"),
    (("--model", "M", "--threshold", "1.5"), "--threshold"),
    (("--model", "M", "--arch", "alexnet"), "valid: resnet50"),
    (("--model", "M", "--target-fpr", "1.5"), "target_fpr must be in (0, 1)"),
    (("--model", "M", "--attacks", "pgd_linf:-8"), "eps must be >= 0"),
    (("--model", "M", "--attacks", "cw_l2"), "needs an eps > 0"),
])
def test_cli_rejects_bad_model_m_arguments(tiny_data, args, message, capsys):
    import main
    try:
        code = main.main(list(args) + ["--data-dir", tiny_data])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code != 0
    assert message in err
    assert "Traceback" not in err


def test_parse_vectors_canonical_names_defaults_and_duplicates():
    assert parse_vectors("paper")[0] == ("pgd_linf", 8.0)
    assert parse_vectors("PGD-Linf:8, fgsm, mia_l2:300") == [
        ("pgd_linf", 8.0), ("fgsm", 8.0), ("mia_l2", 300.0)]
    with pytest.raises(ValueError, match="given twice"):
        parse_vectors("pgd_linf:8,pgd-linf:8")
    with pytest.raises(ValueError, match="needs an eps > 0"):
        parse_vectors("pgd_linf:0")
    with pytest.raises(ValueError, match="must be a number"):
        parse_vectors("pgd_linf:eight")


def test_default_architecture_is_defined_once():
    from evaluation.options import MOptions
    from models.classifier import DEFAULT_ARCH

    assert MOptions().arch == DEFAULT_ARCH == EvalConfig(get_class_set("CS5b")).arch


@pytest.mark.slow
def test_adding_a_defense_to_a_finished_run_recomputes_no_attack(tiny_data, tmp_path,
                                                                  monkeypatch):
    first = ev.run_evaluation(_config(tiny_data, tmp_path), log=lambda s: None)
    assert set(first["defenses"]) == {"none", "unmask"}
    calls = []
    real_run_attack = attack_store.run_attack
    monkeypatch.setattr(attack_store, "run_attack", lambda model, x, y, name, **kw: (
        calls.append(name), real_run_attack(model, x, y, name, **kw))[1])
    logs = []
    more = ev.run_evaluation(_config(tiny_data, tmp_path, defenses=(
        "none", "unmask", "bitdepth", "downsample:0.75"), progress=True), log=logs.append)
    assert calls == [], "the saved attacks must serve every defense"
    # progress with time left, per stage: the attack vectors, each defense's image sets
    assert any(m.startswith("attacks: 2 of 2 done (") and "left" in m for m in logs)
    judged = [m for m in logs if m.startswith("bitdepth: ")]
    assert [m.split(",")[0] for m in judged] == ["bitdepth: 2 of 3 image sets judged",
                                                 "bitdepth: 3 of 3 image sets judged"]
    assert not any("observ" in m and "unmask" in m for m in logs)
    for key in ("benign", "attacks", "threshold"):
        assert more[key] == first[key], "adding defenses must not change UnMask's numbers"
    for label in ("none", "unmask"):
        assert more["defenses"][label] == first["defenses"][label]
    for label in ("bitdepth", "downsample:0.75"):
        block = more["defenses"][label]
        assert block["kind"] == "classifier" and block["attacked_model"] == "m"
        assert [(r["attack"], r["eps"], r["threat_model"]) for r in block["attacks"]] == [
            ("pgd_linf", 8, "gray-box"), ("fgsm", 8, "gray-box")]
    assert more["defenses"]["downsample:0.75"]["params"]["scale"] == 0.75
    # the none defense is M: its accuracies are Table IV's None column
    assert more["defenses"]["none"]["benign"]["acc"] == more["benign"]["acc_none"]
    assert [r["acc"] for r in more["defenses"]["none"]["attacks"]] == [
        a["acc_none"] for a in more["attacks"]]
    bench = open(os.path.join(_config(tiny_data, tmp_path).out_dir, "bench.md")).read()
    assert "downsample:0.75" in bench and "bitdepth" in bench


def test_budgets_that_differ_past_the_reports_precision_never_share_a_record():
    assert records.eps_tag(8) == "8" and records.eps_tag(300.0) == "300"
    assert records.eps_tag(0.5) == "0.5"
    assert records.eps_tag(8.0000001) == "8.0000001" != records.eps_tag(8)
    with pytest.raises(ValueError, match="differ only past the reports' precision"):
        parse_vectors("pgd_linf:8,pgd_linf:8.0000001")
    assert parse_vectors("paper,uap:10,ga:3")[-2:] == [("uap", 10.0), ("ga", 3.0)]
    with pytest.raises(ValueError, match="given twice"):
        parse_vectors("paper,pgd_linf:8")


def test_replaced_test_images_are_noticed(tiny_data, tmp_path):
    """Saved records are keyed by the images' contents, not only their file names."""
    cfg = _config(tiny_data, tmp_path)
    data = ev.load_data(cfg, log=lambda s: None)
    os.makedirs(cfg.m_dir, exist_ok=True)
    with open(os.path.join(cfg.m_dir, "best.h5"), "wb") as f:
        f.write(b"weights")
    base = records.fingerprint(cfg, data)
    data["x_test"] = data["x_test"].copy()
    data["x_test"][0, 0, 0, 0] ^= 1               # one pixel of one image changes
    assert records.fingerprint(cfg, data)["test_images"] != base["test_images"]
    assert records.fingerprint(cfg, data)["test_keys"] == base["test_keys"]


def test_a_new_attack_version_recomputes_its_saved_records(tiny_data, tmp_path, monkeypatch):
    """Code changes that keep an attack's configuration (e.g. the UAP fit's returned v) must
    not reuse records saved by the old code; version 1 adds nothing, so old records stay."""
    import attacks.registry as registry

    cfg = _config(tiny_data, tmp_path)
    base = records.vector_fingerprint(cfg, {"m": "x"}, "pgd_linf", 8.0)
    assert "attack_version" not in base
    spec = registry.ATTACKS["pgd_linf"]
    import dataclasses
    monkeypatch.setitem(registry.ATTACKS, "pgd_linf", dataclasses.replace(spec, version=2))
    assert records.vector_fingerprint(cfg, {"m": "x"}, "pgd_linf", 8.0) != base
    assert registry.ATTACKS["uap"].version >= 2


def test_training_and_validation_records_do_not_depend_on_the_test_subset(tiny_data, tmp_path):
    """Another --n-test must not recompute what depends only on the training / validation
    images (the trajectory detector's representatives and training attacks, thresholds)."""
    prints = {}
    for n in (9, 6):
        cfg = _config(tiny_data, tmp_path, n_test=n)
        data = ev.load_data(cfg, log=lambda s: None)
        os.makedirs(cfg.m_dir, exist_ok=True)
        with open(os.path.join(cfg.m_dir, "best.h5"), "wb") as f:
            f.write(b"weights")
        bench = Comparison(cfg, data, {"m": lambda x: np.zeros((len(x), 3), np.float32)},
                         log=lambda s: None)
        prints[n] = {s: bench.images(s).fingerprint for s in ("train", "val", "test")}
    assert prints[9]["train"] == prints[6]["train"] and prints[9]["val"] == prints[6]["val"]
    assert prints[9]["test"] != prints[6]["test"]


def test_eta_counts_items_and_estimates_what_is_left():
    from models.progress import Eta, format_seconds

    now = [100.0]
    eta = Eta(4, done=1, clock=lambda: now[0])
    now[0] += 30
    assert eta.step() == "30 s elapsed, ~1 min 00 s left"      # 30 s per item, 2 to go
    now[0] += 90
    assert eta.step() == "2 min 00 s elapsed, ~1 min 00 s left"
    assert eta.done == 3
    assert format_seconds(7500) == "2 h 05 min"
    with pytest.raises(ValueError, match="0 <= done <= total"):
        Eta(3, done=4)


@pytest.mark.slow
def test_training_writes_tensorboard_scalars_per_epoch(tmp_path):
    """M's training writes its loss and accuracies per epoch as TensorBoard scalars under the
    checkpoint folder, as K's does."""
    from models.train_classifier import TENSORBOARD

    x, y = _separable(n=32)
    state = train_classifier(_small_m(), x, y, x, y, str(tmp_path),
                             TrainConfig(epochs=2, batch_size=16, learning_rate=0.01),
                             progress=False, log=lambda s: None)
    events = sorted((tmp_path / TENSORBOARD).glob("events.out.tfevents.*"))
    assert len(events) == 1
    seen = {}
    for event in tf.compat.v1.train.summary_iterator(str(events[0])):
        for value in event.summary.value:
            seen.setdefault(value.tag, []).append(
                (event.step, float(tf.make_ndarray(value.tensor))))
    assert sorted(seen) == ["loss", "train_acc", "val_acc"]
    assert [s for s, _ in seen["val_acc"]] == [1, 2]
    assert max(v for _, v in seen["val_acc"]) == pytest.approx(state["best_val_acc"])
    assert all(np.isfinite(v) and v > 0 for _, v in seen["loss"])

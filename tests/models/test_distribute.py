"""M's and the trajectory detector's training under tf.distribute, on the CPU:
MirroredStrategy over two logical CPU devices, and MultiWorkerMirroredStrategy with two worker
processes talking over localhost, each reaching the single-device accuracy (M) and validation
AUC (detector) on a small problem.  Every run is a fresh process
(``tests/_distribute_worker.py``): TensorFlow fixes its devices and cluster at start-up."""
import json
import os
import socket
import subprocess
import sys

import pytest

from models.distribute import check_tf_config, make_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "_distribute_worker.py")
TIMEOUT = 600


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _run(kind, ckpt, out, env=None):
    return subprocess.Popen([sys.executable, WORKER, kind, str(ckpt), str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _result(proc, out):
    log, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, log[-3000:]
    with open(out) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    return _result(_run("none", tmp / "ckpt", tmp / "out.json"), tmp / "out.json")


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_matches_one_device(single, tmp_path):
    res = _result(_run("mirrored", tmp_path / "ckpt", tmp_path / "out.json"),
                  tmp_path / "out.json")
    print("single device %.3f, mirrored (2 replicas) %.3f" % (single["val_acc"],
                                                               res["val_acc"]))
    assert single["replicas"] == 1 and res["replicas"] == 2
    assert single["val_acc"] >= 0.9
    assert abs(res["val_acc"] - single["val_acc"]) <= 0.1
    assert os.path.isfile(tmp_path / "ckpt" / "best.h5")
    _detector_matches(single, res)


def _detector_matches(single, res):
    """The detector trained over the replicas reaches the single-device validation AUC."""
    print("detector val macro-AUC: single %.3f, distributed %.3f"
          % (single["detector_val_auc"], res["detector_val_auc"]))
    assert 0.75 <= single["detector_val_auc"] < 1.0
    assert abs(res["detector_val_auc"] - single["detector_val_auc"]) <= 0.05


@pytest.mark.slow
def test_multi_worker_over_localhost_matches_one_device(single, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": ["localhost:%d" % p for p in ports]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                     "task": {"type": "worker", "index": i}}))
        procs.append(_run("multi-worker", tmp_path / "ckpt", tmp_path / ("w%d.json" % i),
                          env))
    res = [_result(p, tmp_path / ("w%d.json" % i)) for i, p in enumerate(procs)]
    print("single device %.3f, workers %s" % (single["val_acc"],
                                              [r["val_acc"] for r in res]))
    assert [r["replicas"] for r in res] == [2, 2]
    assert [r["chief"] for r in res] == [True, False]
    assert res[0]["val_acc"] == res[1]["val_acc"], "the workers hold different models"
    assert abs(res[0]["val_acc"] - single["val_acc"]) <= 0.1
    assert res[0]["detector_weights"] == res[1]["detector_weights"], \
        "the workers hold different detectors"
    _detector_matches(single, res[0])
    files = sorted(os.listdir(tmp_path / "ckpt"))        # written by the chief only, once
    assert files == ["best.h5", "last.h5", "resume.npz", "state.json", "tensorboard"]


def test_strategy_names_and_tf_config_are_checked():
    assert make_strategy("none") is None
    with pytest.raises(ValueError, match="must be one of"):
        make_strategy("horovod")
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        check_tf_config(None)
    with pytest.raises(ValueError, match="TF_CONFIG is not usable"):
        check_tf_config('{"cluster": {}}')
    with pytest.raises(ValueError, match="task.index 3 is not an index"):
        check_tf_config('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", '
                        '"index": 3}}')
    cfg = check_tf_config('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"index": 1}}')
    assert cfg["task"]["index"] == 1


def test_the_chief_follows_tensorflows_rule():
    """Worker 0 is the chief unless the cluster has a "chief" job, which then is."""
    import types

    from models.distribute import is_chief

    def strategy(jobs, task_type, task_id):
        spec = types.SimpleNamespace(as_dict=lambda: jobs)
        resolver = types.SimpleNamespace(cluster_spec=lambda: spec, task_type=task_type,
                                         task_id=task_id)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:1"]}
    assert is_chief(None)
    assert is_chief(strategy(workers, "worker", 0))
    assert not is_chief(strategy(workers, "worker", 1))
    with_chief = dict(workers, chief=["c:1"])
    assert is_chief(strategy(with_chief, "chief", 0))
    assert not is_chief(strategy(with_chief, "worker", 0))
    assert is_chief(strategy({}, None, None))


@pytest.mark.slow
def test_main_multi_worker_end_to_end(tmp_path):
    """``main.py --distribute multi-worker`` on two processes over localhost: both train M
    (each step split over the two workers), the chief then evaluates and writes the report;
    the other worker stops after training and writes nothing of its own."""
    from data.synthetic import MANIFEST
    from toys import tiny_unmask

    data = tiny_unmask(str(tmp_path / "data"))
    os.remove(os.path.join(data, MANIFEST))    # read as a real data set in the original layout
    cluster = {"worker": ["localhost:%d" % p for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                     "task": {"type": "worker", "index": i}}))
        args = ["--model", "M", "--classset", "CS3a", "--data-dir", data, "--input-size", "32",
                "--epochs", "2", "--batch-size", "16", "--lr", "0.01", "--attacks", "fgsm:8",
                "--n-test", "6", "--extractor", "oracle", "--defenses", "none,unmask",
                "--checkpoint-dir", str(tmp_path / "ckpt"), "--no-progress",
                "--results-dir", str(tmp_path / ("results%d" % i)),
                "--distribute", "multi-worker"]
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py")] + args,
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert "(multi-worker, 2 replicas)" in logs[0] and "(multi-worker, 2 replicas)" in logs[1]
    assert "the chief (worker 0) evaluates" in logs[1]
    with open(tmp_path / "results0" / "cs3-1" / "mobilenetv2_050" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["extractor"] == "oracle" and metrics["attacks"][0]["attack"] == "fgsm"
    assert not os.path.exists(tmp_path / "results1")          # the other worker: nothing
    # the model's folder, and beside it the lock its one writer held (models/train_classifier.py)
    listed = sorted(os.listdir(tmp_path / "ckpt" / "model_m" / "cs3-1"))
    m_dirs = [d for d in listed if not d.endswith(".lock")]
    assert len(m_dirs) == 1 and listed == sorted(m_dirs + [m_dirs[0] + ".lock"]), listed
    assert sorted(os.listdir(tmp_path / "ckpt" / "model_m" / "cs3-1" / m_dirs[0])) == [
        "best.h5", "last.h5", "resume.npz", "state.json", "tensorboard"]

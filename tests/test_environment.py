"""Tests of the project's environment files: pinned dependencies (requirements.txt and
environment.yml agree, the required packages are pinned and imported ones are covered), the
tf-keras switch of tfcompat, .gitignore and the CI script running the README's test command.
"""
import ast
import fnmatch
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Project code that runs or is tested (bench/ has its own requirements file).
PROJECT_DIRS = ("data", "models", "attacks", "defense", "evaluation", "mrcnn_config", "tests")
PROJECT_FILES = ("main.py", "tfcompat.py")

# The required packages; None = any pinned version.
REQUIRED = {
    "tensorflow": "2.21", "tf-keras": "2.21", "cleverhans": "4.0.0", "scikit-image": None,
    "pycocotools": None, "numpy": None, "pandas": None, "scikit-learn": None, "scipy": None,
    "h5py": None, "matplotlib": None, "tqdm": None, "pytest": None,
}


def normalize(name):
    """PEP 503 name normalisation (``tf_keras`` == ``tf-keras`` == ``TF.Keras``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(line, where):
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!-]+)", line.strip())
    assert match, "%s: %r is not an exact pin 'name==version'" % (where, line)
    return normalize(match.group(1)), match.group(2)


def requirements_pins():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = parse_pin(line, "requirements.txt")
            assert name not in pins, "requirements.txt pins %s twice" % name
            pins[name] = version
    return pins


def environment_yml_pip_pins():
    """The entries of the ``- pip:`` list of environment.yml (no YAML library needed)."""
    pins, pip_indent = {}, None
    for raw in (ROOT / "environment.yml").read_text().splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if pip_indent is None:
            if line.strip() in ("- pip:", "-  pip:"):
                pip_indent = indent
            continue
        if indent <= pip_indent:
            break
        item = line.strip()
        assert item.startswith("- "), "environment.yml: unexpected pip entry %r" % raw
        name, version = parse_pin(item[2:], "environment.yml")
        assert name not in pins, "environment.yml pins %s twice" % name
        pins[name] = version
    assert pip_indent is not None, "environment.yml has no '- pip:' list"
    return pins


# ----------------------------------------------------------------------------- pins

def test_requirements_and_environment_yml_pin_the_same_versions():
    req, yml = requirements_pins(), environment_yml_pip_pins()
    assert req, "requirements.txt pins nothing"
    assert sorted(set(req) ^ set(yml)) == []
    assert {n: v for n, v in req.items() if yml[n] != v} == {}


def test_environment_yml_uses_python_3_11_and_pip():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"^\s*-\s*python\s*=\s*3\.11\b", text, re.M)
    assert re.search(r"^\s*-\s*pip\s*$", text, re.M)


@pytest.mark.parametrize("package", sorted(REQUIRED))
def test_required_package_is_pinned(package):
    pins = requirements_pins()
    assert package in pins, "%s is not pinned in requirements.txt" % package
    wanted = REQUIRED[package]
    if wanted is not None:
        version = pins[package]
        assert version == wanted or version.startswith(wanted + "."), (package, version)


def test_installed_versions_match_the_pins():
    wrong = {}
    for name, version in requirements_pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}, "pinned vs installed: %s" % wrong


def _imported_top_level_modules():
    found = {}
    paths = [ROOT / f for f in PROJECT_FILES]
    for d in PROJECT_DIRS:
        paths += sorted((ROOT / d).rglob("*.py"))
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_pinned():
    local = ({p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if p.is_dir()}
             | {p.stem for p in (ROOT / "tests").glob("*.py")})   # test helpers (tests/toys.py)
    distributions = importlib.metadata.packages_distributions()
    pins = requirements_pins()
    missing = {}
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in local or module == "__future__":
            continue
        dists = {normalize(d) for d in distributions.get(module, [])}
        if not dists & set(pins):
            missing[module] = (where, sorted(dists))
    assert missing == {}, "imported but not pinned in requirements.txt: %s" % missing


# ----------------------------------------------------------------------------- tf-keras switch

def test_tfcompat_routes_tf_keras_to_tf_keras_2():
    """In a fresh interpreter without TF_USE_LEGACY_KERAS: ``import tfcompat`` then
    ``import tensorflow`` gives tf.keras == tf_keras (Keras 2.x)."""
    code = (
        "import json, os\n"
        "import tfcompat\n"
        "flag = os.environ.get('TF_USE_LEGACY_KERAS')\n"
        "import tensorflow as tf\n"
        "import tf_keras\n"
        "tf2, keras = tfcompat.import_tf()\n"
        "layer = tf.keras.layers.Dense(2)\n"
        "print(json.dumps({'flag': flag, 'module': tf.keras.__name__,\n"
        "    'tf_keras': tf_keras.__version__, 'tf': tf.__version__,\n"
        "    'same_model': tf.keras.Model is tf_keras.Model,\n"
        "    'layer_is_tf_keras': isinstance(layer, tf_keras.layers.Layer),\n"
        "    'import_tf': [tf2 is tf, keras is tf_keras]}))\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["flag"] == "1"
    assert out["module"].startswith("tf_keras"), out["module"]  # not Keras 3
    assert out["tf_keras"].startswith("2.21")
    assert out["tf"].startswith("2.21")
    assert out["same_model"] and out["layer_is_tf_keras"]
    assert out["import_tf"] == [True, True]


# ----------------------------------------------------------------------------- start-up noise

# TensorFlow's C++ start-up messages that tfcompat must keep off stderr.
_START_UP_NOISE = re.compile(r"oneDNN custom operations|cuda|This TensorFlow binary is optimized|"
                             r"rebuild TensorFlow with the appropriate|absl::InitializeLog",
                             re.I)


def test_import_tf_prints_no_start_up_noise():
    """``tfcompat.import_tf()`` in a fresh interpreter (with none of the user's TF_* logging
    settings) prints nothing but what the program prints: no oneDNN, CUDA or CPU-feature
    banner on stderr."""
    code = "import tfcompat; tfcompat.import_tf(); print('ok')"
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS", "TF_USE_LEGACY_KERAS")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    noise = [line for line in proc.stderr.splitlines() if _START_UP_NOISE.search(line)]
    assert noise == [], proc.stderr


# ----------------------------------------------------------------------------- .gitignore, CI

def _gitignore_matches(rel):
    """Minimal .gitignore matcher (used when git is not available)."""
    parts = rel.split("/")
    for raw in (ROOT / ".gitignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#") or pat.startswith("!"):
            continue
        anchored = pat.startswith("/") or "/" in pat.rstrip("/")
        pat = pat.strip("/")
        if anchored:
            n = len(pat.split("/"))
            if any(fnmatch.fnmatch("/".join(parts[:k]), pat) for k in range(n, len(parts) + 1)):
                return True
        elif any(fnmatch.fnmatch(p, pat) for p in parts):
            return True
    return False


def is_ignored(rel):
    if shutil.which("git") and (ROOT / ".git").exists():
        proc = subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode == 0
    return _gitignore_matches(rel)


@pytest.mark.parametrize("rel", ["data/unmask/VOC2010/train.json", "data/unmask/cs5-2/x.jpg",
                                 "data/unmask.tmp-12345/VOC2010/train.json",
                                 "data/unmask.tmp-12345/cs5-2/train/dog/dog_00000.jpg",
                                 "data/other.tmp-7/synthetic.json",
                                 "logs/run.log", "checkpoints/mask_rcnn_parts_0040.h5",
                                 "results/table_iv.json"])
def test_gitignore_ignores_generated_folders(rel):
    assert is_ignored(rel), rel


@pytest.mark.parametrize("rel", ["data/knowledge.py", "data/synthetic.py", "main.py",
                                 "data/unmask.tmp-notes.py",
                                 "tests/test_environment.py", "requirements.txt", ".ci/run"])
def test_gitignore_keeps_the_sources(rel):
    assert not is_ignored(rel), rel


def _readme_test_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, re.S | re.M)
    assert quick, "README.md needs a '## Quick start' section"
    readme = quick.group(1)
    blocks = re.findall(r"```[^\n]*\n(.*?)```", readme, re.S)
    return [" ".join(line.split()) for block in blocks for line in block.splitlines()
            if "pytest" in line and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_test_command():
    commands = _readme_test_commands()
    assert commands, "README.md has no code block with the pytest command"
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    script = [" ".join(line.split()) for line in ci.read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    for command in commands:
        assert command in script, "README test command %r is not run by .ci/run" % command

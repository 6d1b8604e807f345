"""What every benchmark records beside its figures: machine, versions, load and time.

A figure measured on a shared 2-core machine means little without the load it ran under, so
each benchmark stores :func:`machine_info` once and :func:`load_average` before and after its
timed part.  Paths are recorded relative to the repository (:func:`repo_relative`,
:func:`relative_paths`), never as absolute paths of the machine.  Importing this module does
not import TensorFlow.
"""
import os
import platform
import re
import time
from importlib import metadata

#: Packages whose versions a benchmark result names (missing ones are recorded as None).
DEFAULT_PACKAGES = ("tensorflow", "tf-keras", "cleverhans", "numpy", "pycocotools",
                    "scikit-image")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def versions(packages=DEFAULT_PACKAGES) -> dict:
    """``{package: version or None}`` of the installed distributions, plus Python's."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def load_average():
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info(packages=DEFAULT_PACKAGES) -> dict:
    """CPU model, core count, OS, package versions and the UTC time of the measurement."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "versions": versions(packages),
            "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ----------------------------------------------------------------------------- paths
#: The repository the benchmarks belong to; recorded paths are relative to it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Stands for the folders of an absolute path outside the repository (only its last name is
#: kept), so a result file never records the layout of the machine it ran on.
OUTSIDE = "<outside the repository>"


def repo_relative(path: str) -> str:
    """``path`` as recorded in a result: relative to the repository (``/``-separated).

    A relative path is kept as it is (the benchmarks run their commands in the repository);
    an absolute path inside the repository becomes relative to it; an absolute path outside
    it becomes ``<outside the repository>/<last name>``.
    """
    path = str(path)
    if not os.path.isabs(path):
        return path.replace(os.sep, "/")
    absolute = os.path.normpath(path)
    try:
        rel = os.path.relpath(absolute, REPO_ROOT)
    except ValueError:  # another drive (Windows)
        rel = os.pardir
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return "%s/%s" % (OUTSIDE, os.path.basename(absolute))
    return rel.replace(os.sep, "/")


def record_command(argv) -> str:
    """A command line for a result: the interpreter as ``python``, paths via
    :func:`repo_relative`."""
    argv = [str(a) for a in argv]
    if argv and os.path.isabs(argv[0]) and os.path.basename(argv[0]).startswith("python"):
        argv[0] = "python"
    return " ".join(repo_relative(a) if os.path.isabs(a) else a for a in argv)


def relative_paths(obj, roots=()):
    """Copy of a JSON-like result with every absolute path of the repository (and of the
    extra ``roots`` folders, e.g. a run's temporary folder) inside its strings rewritten by
    :func:`repo_relative`; numbers and everything else are kept."""
    folders = sorted({os.path.normpath(os.path.abspath(r)) for r in (REPO_ROOT,) + tuple(roots)},
                     key=len, reverse=True)

    def fix(text: str) -> str:
        for folder in folders:
            pattern = re.escape(folder) + r"(?:[/\\][^\s'\",;]*)?(?=$|[\s'\",;])"
            text = re.sub(pattern, lambda m: repo_relative(m.group(0)), text)
        return text

    if isinstance(obj, dict):
        return {fix(k) if isinstance(k, str) else k: relative_paths(v, roots)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [relative_paths(v, roots) for v in obj]
    if isinstance(obj, str):
        return fix(obj)
    return obj

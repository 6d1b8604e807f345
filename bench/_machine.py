"""What every benchmark records beside its figures: machine, versions, load and time.

A figure measured on a shared 2-core machine means little without the load it ran under, so
each benchmark stores :func:`machine_info` once and :func:`load_average` before and after its
timed part.  Importing this module does not import TensorFlow.
"""
import os
import platform
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

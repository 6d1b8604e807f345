"""One adaptive attack in two runs, compared on the test images both attacked: how much the
shorter (or narrower) run over-stated what the defense keeps.

A run's own convergence check compares its goal rate at an earlier step with its last one.
This compares two whole runs -- say the 100-step and the 200-step run of AutoAttack on the
hardened UnMask -- image by image. It works because a smaller ``--n-test`` is a subset of a
larger one (the test subset is taken class by class in one seeded order), so the 40 images of
a quick run are among the 300 of a long one. The two records must be of the same defense,
attack, budget, goal and models: only the engine's settings (steps, restarts, routes) and the
image subset may differ, and each run's images are checked against its record's digests.

Writes ``bench/results/tables/NAME.json`` (for ``bench/doc_tables.py``): per run its steps, its
own defended rate and the rate on the shared images, each with its 95% Wilson interval, the
images only that run's attack left standing, and in the caption the paired difference with its
bootstrap interval and McNemar's exact p.

    .venv/bin/python bench/bench_steps.py --run results_r2/cs5-2/mobilenetv2_050 \\
        --run results_headline/cs5-2/mobilenetv2_050 --defense unmask:k=robust:m=at \\
        --attack autoattack:8 --goal wrong --name steps_aa8 \\
        --command "python main.py ... (run 1)" --command "python main.py ... (run 2)"
"""
import argparse
import hashlib
import json
import os
import sys
import zipfile
from typing import Dict, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
from data.classset import load_split  # noqa: E402
from evaluation.config import from_dict, read_record  # noqa: E402
from evaluation.report.answer import rate_text  # noqa: E402
from evaluation.stats import paired, wilson  # noqa: E402
from evaluation.store.records import (Field, array_digest, eps_tag, read_npz,  # noqa: E402
                                      safe_name)

TABLES = os.path.join(ROOT, "bench", "results", "tables")
#: What two records compared here may differ in: the engine's settings, the routes taken and
#: the image subset (each checked against the run's own images).
MAY_DIFFER = {"engine", "routes", "test_keys", "test_images"}


class RunImages:
    """One run's adaptive record of (defense, attack, eps, threat, goal) and its test keys.

    Attributes:
        keys: the run's test image keys, in the record's order ([n] strings).
        defended: bool [n]: the image still defended (not ``success``) after the attack.
        fp: the record's fingerprint (a dict).
    """

    def __init__(self, run: str, defense: str, attack: str, eps: float, threat: str,
                 goal: str):
        self.run = run
        path = os.path.join(run, "vectors", threat, safe_name(defense),
                            "test-%s_%s.%s.npz" % (attack, eps_tag(eps), goal))
        if not os.path.isfile(path) or not os.path.isfile(os.path.join(run, "config.json")):
            raise FileNotFoundError(
                "--run %s has no finished %s record of %s %s eps=%g [%s] (%s, and the "
                "config.json a run writes when it ends): finish the run (rerun its command; it "
                "resumes) or give the run that made it"
                % (run, threat, defense, attack, eps, goal, path))
        cfg = from_dict(read_record(os.path.join(run, "config.json"))["config"])
        self.fp, rec = _record(run, path)
        self.convergence = json.loads(str(rec["convergence"])) if "convergence" in rec else {}
        split = load_split(cfg.data_dir, cfg.class_set, "test").subset(cfg.n_test, seed=cfg.seed)
        self.keys = list(split.keys)
        digest = hashlib.sha1("\n".join(self.keys).encode()).hexdigest()[:16]
        images = array_digest(split.arrays(cfg.input_size), split.labels)
        if (digest, images) != (self.fp["test_keys"], self.fp["test_images"]):
            raise ValueError("--run %s: the test images under %s are not the ones its record "
                             "was made on (keys or pixels differ); run this from the folder "
                             "the run was started in, with its data" % (run, cfg.data_dir))
        self.defended = ~np.asarray(rec["success"], bool)
        if self.defended.shape != (len(self.keys),):
            raise ValueError("--run %s: %s holds %d images, its config %d"
                             % (run, path, self.defended.size, len(self.keys)))
        self.steps = int(self.fp["engine"]["steps"])
        self.restarts = int(self.fp["engine"]["restarts"])

    @property
    def upper_bound(self) -> bool:
        """The run's own trace says its attack had not settled (its rate is an upper bound)."""
        return self.convergence.get("converged") is False


def _record(run: str, path: str) -> Tuple[Dict, Dict]:
    """(fingerprint, arrays) of an adaptive record, checked against its digest (ValueError
    naming the problem)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            fp = json.loads(str(f["fingerprint"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError("--run %s: %s cannot be read (%s); rerun the run's command to "
                         "recompute it" % (run, path, e)) from None
    missing = [k for k in ("engine", "test_keys", "test_images") if k not in fp]
    if missing or "steps" not in fp.get("engine", {}):
        raise ValueError("--run %s: %s is not an adaptive engine's record (its fingerprint "
                         "lacks %s)" % (run, path, ", ".join(missing) or "engine.steps"))
    problems = []
    rec = read_npz(path, fp, log=problems.append, expect={"success": Field(1, "bool")})
    if rec is None:
        raise ValueError("--run %s: the record %s is damaged: %s; rerun the run's command to "
                         "recompute it" % (run, path, "; ".join(problems) or "unreadable"))
    return fp, rec


def check_comparable(a: RunImages, b: RunImages) -> List[str]:
    """What the two records differ in (``engine.steps``, ``test_keys``, ...): ValueError when
    it is more than the engine's settings, the routes and the images."""
    keys = set(a.fp) | set(b.fp)
    differ = sorted(k for k in keys if a.fp.get(k) != b.fp.get(k))
    bad = [k for k in differ if k not in MAY_DIFFER]
    if bad:
        raise ValueError("--run %s and --run %s attacked different things (their records "
                         "differ in %s): compare runs of the same defense, models, attack, "
                         "budget and goal" % (a.run, b.run, ", ".join(bad)))
    out = []
    for k in differ:
        if isinstance(a.fp.get(k), dict) and isinstance(b.fp.get(k), dict):
            inner = set(a.fp[k]) | set(b.fp[k])
            out += ["%s.%s %s → %s" % (k, i, a.fp[k].get(i), b.fp[k].get(i))
                    for i in sorted(inner) if a.fp[k].get(i) != b.fp[k].get(i)]
        else:
            out.append(k)
    return out


def shared(a: RunImages, b: RunImages) -> Tuple[np.ndarray, np.ndarray]:
    """Indices into ``a`` and ``b`` of the images both attacked, in ``a``'s order."""
    where_b = {k: i for i, k in enumerate(b.keys)}
    ia = np.array([i for i, k in enumerate(a.keys) if k in where_b], int)
    ib = np.array([where_b[a.keys[i]] for i in ia], int)
    return ia, ib


def _rate(flags: np.ndarray, upper: bool = False) -> str:
    n, k = int(flags.size), int(flags.sum())
    return rate_text(k / n, wilson(k, n), upper=upper) if n else "–"


def table_of(a: RunImages, b: RunImages, commands: List[str]) -> Dict:
    """The comparison table (``doc_tables`` format, its caption the paired comparison) of two
    runs; ``*`` marks a rate whose run's own trace says it had not settled."""
    differ = check_comparable(a, b)
    ia, ib = shared(a, b)
    if ia.size < 2:
        raise ValueError("--run %s and --run %s share %d test image(s): a comparison needs at "
                         "least 2" % (a.run, b.run, ia.size))
    da, db = a.defended[ia], b.defended[ib]
    c = paired(da, db)
    rows = []
    for run, mine, other in ((a, da, db), (b, db, da)):
        rows.append([_machine.repo_relative(run.run), "%d × %d" % (run.steps, run.restarts),
                     "%s on %d" % (_rate(run.defended, run.upper_bound), run.defended.size),
                     _rate(mine, run.upper_bound), str(int(np.sum(mine & ~other)))])
    first, second = (_machine.repo_relative(r.run) for r in (a, b))
    verdict = {"a > b": "the second run's attack took more images",
               "a < b": "the first run's attack took more images"}.get(
        c["claim"], "not distinguishable on %d images" % c["n"])
    caption = ("On the %d shared images, %s − %s: %.2f − %.2f = %+.2f [%+.2f, %+.2f] (paired "
               "bootstrap), McNemar p = %.3g: %s. The records differ in: %s."
               % (c["n"], first, second, c["a_rate"], c["b_rate"], c["difference"],
                  c["interval"][0], c["interval"][1], c["p_mcnemar"], verdict,
                  "; ".join(differ) or "nothing"))
    source = "; ".join("%s (run %s)" % (cmd, _machine.repo_relative(r.run))
                       for cmd, r in zip(commands, (a, b)))
    return {"columns": ["run", "steps × restart rounds", "defended on its own images",
                        "defended on the %d shared images" % c["n"],
                        "shared images only this run's attack left standing"],
            "rows": rows, "caption": caption, "source": source, "comparison": c}


def _vector(text: str) -> Tuple[str, float]:
    name, sep, eps = text.rpartition(":")
    try:
        if not sep:
            raise ValueError
        return name, float(eps)
    except ValueError:
        raise SystemExit("--attack %r: give NAME:EPS, e.g. autoattack:8" % text) from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True,
                   help="a run folder (RESULTS/<code>/<arch>); give exactly two")
    p.add_argument("--command", action="append", required=True,
                   help="the command of each --run, in the same order")
    p.add_argument("--defense", required=True)
    p.add_argument("--attack", required=True, help="NAME:EPS, e.g. autoattack:8")
    p.add_argument("--goal", default="wrong", choices=("wrong", "undetected"))
    p.add_argument("--threat", default="adaptive", choices=("adaptive", "transfer"))
    p.add_argument("--name", required=True)
    args = p.parse_args(argv)
    if len(args.run) != 2 or len(args.command) != 2:
        raise SystemExit("give exactly two --run and one --command for each (got %d and %d)"
                         % (len(args.run), len(args.command)))
    attack, eps = _vector(args.attack)
    try:
        a, b = (RunImages(r, args.defense, attack, eps, args.threat, args.goal)
                for r in args.run)
        table = table_of(a, b, args.command)
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from None
    from data.fileio import write_json_atomic
    path = os.path.join(TABLES, args.name + ".json")
    write_json_atomic(path, table, indent=1)
    print(table["caption"])
    print("wrote %s" % os.path.relpath(path, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

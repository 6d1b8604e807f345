"""The attack store: the gray-box attack records of a run -- the test (or validation) images
attacked on M or on the AT model by one attack vector -- computed once and cached in
``<out>/vectors/attacks/<model>/<split>-<attack>_<eps>.npz``.

A record holds the attacked images and the attacked model's clean and adversarial
predictions.  A universal perturbation is fitted once on the training images and kept beside
its record (``...-<attack>_<eps>.fit.npz``); with image shards (the grid's attack units), each
shard is its own file (``....shard-<i>of<n>.npz``), cut at attack-batch boundaries so the
merged shards equal the unsharded record bit for bit.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from attacks import compile_attack, get_attack, run_attack
from defense.base import ImageSet
from evaluation.store.records import (Field, canonical, check_record, eps_tag, read_npz,
                                      shard_bounds, vector_fingerprint, write_npz)

#: The arrays of an attack record (and of its shards) and what they must hold.
ATTACK_ARRAYS = {"x_adv": Field(4, "images"), "pred_adv": Field(1, "classes"),
                 "pred_clean": Field(1, "classes")}


class AttackStore:
    """Gray-box attack records of one run (in memory and on disk).

    Args:
        cfg: the run's :class:`~evaluation.config.EvalConfig`.
        models: model key (``"m"``, ``"at"``) -> the model attacked.
        fp: the run's fingerprint (:func:`evaluation.store.records.fingerprint`).
        digests: model key -> digest of its weights.
        images: split -> the benign :class:`ImageSet` of that split.
        folder: the run's ``vectors/`` folder.
    """

    def __init__(self, cfg, models: Mapping, fp: Dict, digests: Mapping[str, str],
                 images: Callable[[str], ImageSet], folder: str, log: Callable[[str], None]):
        self.cfg = cfg
        self.models = models
        self.fp = fp
        self.digests = digests
        self.images = images
        self.folder = folder
        self.log = log
        #: "<model>/<attack>_<eps>" -> a universal perturbation's fit, a composite's stages
        self.info: Dict[str, Dict] = {}
        self._sets: Dict[tuple, ImageSet] = {}

    def record_path(self, model: str, name: str, eps: float, split: str = "test") -> str:
        """File of the attack record of (``model``, vector, ``split``)."""
        return os.path.join(self.folder, "attacks", model,
                            "%s-%s_%s.npz" % (split, name, eps_tag(eps)))

    def attacked(self, model: str, name: str, eps: float, split: str = "test") -> ImageSet:
        """``split``'s images attacked on ``model`` by ``name`` at ``eps`` (cached npz)."""
        key = (model, name, float(eps), split)
        if key in self._sets:
            return self._sets[key]
        benign = self.images(split)
        vfp = self._vector_fp(model, name, eps, split)
        path = self.record_path(model, name, eps, split)
        rec = self._read(path, vfp, dict(ATTACK_ARRAYS, fit_info=Field(0, rows=False)),
                         len(benign), benign)
        if rec is None and self.cfg.shards > 1 and not get_attack(name).universal:
            rec = self._merge_shards(model, name, eps, split, benign, vfp, path)
        if rec is None:
            rec = self._run_attack(model, name, eps, benign, vfp, path)
        else:
            self.log("%s on %s, eps=%g (%s): reusing %s" % (name, model, eps, split, path))
        info = json.loads(str(rec["fit_info"])) if "fit_info" in rec else None
        if info is not None:        # a universal perturbation's fit, a composite's stages
            self.info["%s/%s_%s" % (model, name, eps_tag(eps))] = info
        self._sets[key] = ImageSet(
            name="%s/%s-%s_%s" % (model, split, name, eps_tag(eps)), split=split,
            x=rec["x_adv"],
            keys=benign.keys, labels=benign.labels, preds={model: rec["pred_adv"]},
            fingerprint=vfp)
        return self._sets[key]

    # ---------------------------------------------------------------- image shards
    def shard_path(self, model: str, name: str, eps: float, shard: int, shards: int,
                   split: str = "test") -> str:
        """File of shard ``shard`` (0-based) of ``shards`` of an attack record."""
        return (self.record_path(model, name, eps, split)[:-len(".npz")]
                + ".shard-%dof%d.npz" % (shard + 1, shards))

    def attack_shard(self, model: str, name: str, eps: float, shard: int, shards: int,
                     split: str = "test") -> str:
        """Attack shard ``shard`` of ``shards`` of ``split``'s images (cached npz); returns
        its file.

        The images are split at attack-batch boundaries (:func:`~evaluation.store.records.
        shard_bounds`) and every batch keeps the seed it has in the whole run, so the shards,
        merged by :meth:`attacked`, equal the unsharded record bit for bit.  Universal attacks
        are not sharded (their perturbation is fitted once on the training images).
        """
        if get_attack(name).universal:
            raise ValueError("%s is a universal attack: it runs as one unit, not in shards"
                             % name)
        benign = self.images(split)
        first, begin, end = shard_bounds(len(benign), self.cfg.attack_batch, shard, shards)
        vfp = self._vector_fp(model, name, eps, split)
        path = self.shard_path(model, name, eps, shard, shards, split)
        if self._read_shard(path, vfp, shard, shards, end - begin, split) is not None:
            return path
        start = time.time()
        whole = self._read(self.record_path(model, name, eps, split), vfp, ATTACK_ARRAYS,
                           len(benign), benign)
        if whole is not None:       # the unsharded record exists: its rows are the shard
            x_adv, pred_adv, pred_clean = (whole[k][begin:end]
                                           for k in ("x_adv", "pred_adv", "pred_clean"))
        elif end > begin:
            res = compile_attack(self.models[model], name, eps).run(
                benign.x[begin:end], benign.labels[begin:end],
                batch_size=self.cfg.attack_batch, seed=self.cfg.seed,
                progress=self.cfg.progress, first_batch=first)
            x_adv, pred_adv, pred_clean = res.x_adv, res.pred_adv, res.pred_clean
        else:       # more shards than attack batches: this one holds no image
            x_adv = np.zeros((0,) + benign.x.shape[1:], np.float32)
            pred_adv = pred_clean = np.zeros(0, np.int64)
        write_npz(path, {"x_adv": x_adv, "pred_adv": pred_adv, "pred_clean": pred_clean,
                         "keys": np.asarray(benign.keys[begin:end], dtype=str),
                         "fingerprint": canonical(dict(vfp, shard=[shard, shards])),
                         "seconds": round(time.time() - start, 1)})
        self.log("%s on %s, eps=%g (%s), shard %d of %d (images %d-%d): %.0f s" % (
            name, model, eps, split, shard + 1, shards, begin, end - 1, time.time() - start))
        return path

    def _vector_fp(self, model: str, name: str, eps: float, split: str) -> Dict:
        return vector_fingerprint(self.cfg, dict(self.fp, model=model,
                                                 model_digest=self.digests[model], split=split),
                                  name, eps)

    def _read_shard(self, path: str, vfp: Dict, shard: int, shards: int,
                    n: int, split: str) -> Optional[Dict]:
        """Shard ``shard`` of ``shards`` of the vector ``vfp`` of ``split``'s images when saved
        whole, else None."""
        return self._read(path, dict(vfp, shard=[shard, shards]),
                          dict(ATTACK_ARRAYS, keys=Field(1)), n, self.images(split))

    def _read(self, path: str, fp: Dict, expect: Dict, n: int, benign: ImageSet
              ) -> Optional[Dict]:
        """A saved attack record checked for this run's classes and image shape."""
        return read_npz(path, fp, self.log, expect, n, classes=len(self.cfg.class_set.classes),
                        image_shape=benign.x.shape[1:])

    def _merge_shards(self, model, name, eps, split, benign, vfp, path) -> Optional[Dict]:
        """The whole record from its ``cfg.shards`` shards (None when one is missing): rows
        put in the image set's order by image id, every id exactly once, written as the
        unsharded run would have written it."""
        shards, parts = self.cfg.shards, []
        for shard in range(shards):
            _, begin, end = shard_bounds(len(benign), self.cfg.attack_batch, shard, shards)
            part = self._read_shard(self.shard_path(model, name, eps, shard, shards, split),
                                    vfp, shard, shards, end - begin, split)
            if part is None:
                self.log("%s on %s, eps=%g (%s): shard %d of %d is missing, so this process "
                         "attacks every image itself (the grid's attack units make the shards)"
                         % (name, model, eps, split, shard + 1, shards))
                return None
            parts.append(part)
        keys = [str(k) for p in parts for k in p["keys"]]
        row = {k: i for i, k in enumerate(keys)}
        if len(row) != len(keys) or sorted(row) != sorted(benign.keys):
            raise ValueError("the shards of %s do not hold each image of %s exactly once: "
                             "delete them to attack again" % (path, benign.name))
        order = np.array([row[k] for k in benign.keys])
        rec = {"x_adv": np.concatenate([p["x_adv"] for p in parts])[order],
               "pred_adv": np.concatenate([p["pred_adv"] for p in parts])[order],
               "pred_clean": np.concatenate([p["pred_clean"] for p in parts])[order],
               "fingerprint": canonical(vfp), "fit_info": "null",
               "seconds": round(sum(float(p["seconds"]) for p in parts), 1)}
        check_record(rec, ATTACK_ARRAYS, len(benign), "the merged attack record %s" % path,
                     len(self.cfg.class_set.classes), benign.x.shape[1:])
        write_npz(path, rec)
        self.log("%s on %s, eps=%g (%s): merged %d shards -> %s" % (name, model, eps, split,
                                                                    shards, path))
        return rec

    # ---------------------------------------------------------------- attacking
    def _run_attack(self, model, name, eps, benign, vfp, path) -> Dict:
        start = time.time()
        kw = dict(eps=eps, batch_size=self.cfg.attack_batch, seed=self.cfg.seed,
                  progress=self.cfg.progress)
        fit_info = "null"
        if get_attack(name).universal:
            compiled = compile_attack(self.models[model], name, eps)
            uap = self._universal_perturbation(model, name, eps, compiled, vfp, path)
            fit_info = json.dumps(uap)
            res = compiled.run(benign.x, benign.labels, batch_size=kw["batch_size"],
                               seed=kw["seed"], progress=kw["progress"])
        elif get_attack(name).stages is not None:       # a composite: its parts are kept
            compiled = compile_attack(self.models[model], name, eps)
            res = compiled.run(benign.x, benign.labels, batch_size=kw["batch_size"],
                               seed=kw["seed"], progress=kw["progress"])
            fit_info = json.dumps(compiled.stage_report())
        else:
            res = run_attack(self.models[model], benign.x, benign.labels, name, **kw)
        rec = {"x_adv": res.x_adv, "pred_adv": res.pred_adv, "pred_clean": res.pred_clean,
               "fingerprint": canonical(vfp), "fit_info": fit_info,
               "seconds": round(time.time() - start, 1)}
        write_npz(path, rec)
        self.log("%s on %s, eps=%g (%s): accuracy %.3f (%.0f s)" % (
            name, model, eps, benign.split, res.adv_accuracy, rec["seconds"]))
        return rec

    def _universal_perturbation(self, model, name, eps, compiled, vfp, path) -> Dict:
        """Fit (or reload) a universal perturbation on the training images; returns its info
        and leaves it set in ``compiled``."""
        fit_path = path[:-len(".npz")] + ".fit.npz"
        rec = read_npz(fit_path, vfp, self.log, {"v": 3})
        if rec is not None:
            compiled.set_perturbation(rec["v"])
            return json.loads(str(rec["info"]))
        info = compiled.fit(self.images("train").x, seed=self.cfg.seed,
                            progress=self.cfg.progress)
        out = {"fooling_rate": float(info.fooling_rate), "passes": int(info.passes),
               "pass_rates": [float(r) for r in getattr(info, "pass_rates", ())],
               "n_images": int(info.n_images), "split": "train"}
        write_npz(fit_path, {"v": np.asarray(info.v, np.float32), "info": json.dumps(out),
                             "fingerprint": canonical(vfp)})
        self.log("%s eps=%g: universal perturbation fooling rate %.3f on %d training images "
                 "(%d passes)" % (name, eps, out["fooling_rate"], out["n_images"],
                                  out["passes"]))
        return out

"""The generative audit (prompt-wise): search the m concepts the method finds hardest to erase, then run the
method and exact Retrain on that set and on random concept sets of the same size, judge every generation
with the concept classifier (UA, RA_in, RA_cross, FD) and say whether the searched set is harder than random.

"Harder" for a concept-unlearning method is a lower UA: its generations of the forgotten concepts stay
recognisable. Retrain (the model trained without the concepts' images) is the reference: its UA says how
recognisable the concepts are when truly never seen (a model may still compose an unseen (object, style)
pair from the object and the style it saw apart). Every unit is cached under its config and seeds.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError
from ..core.hashing import stable_hash
from ..core.io import json_bytes, to_jsonable, write_result_folder
from ..core.progress import Progress
from ..core.runtime import Timer, one_intra_op_thread
from ..core.seeds import derive_seed, generator
from ..core.stats import aggregate, difference_interval, fmt_agg
from ..methods.concepts import make_concept_method
from ..scoring.generation import evaluate_generations
from ..search.concepts import ConceptSearchConfig, search_concepts

METRICS = ("UA", "RA_in", "RA_cross", "FD")
RESULT_FILES = ("summary.json", "results.csv", "concept_weights.npy", "generations.npz")
SCHEMA = "generative-1"


@dataclass(frozen=True)
class ConceptAuditOptions:
    num_random: int = 2  # random concept sets of the same size
    seeds: int = 2  # unlearning seeds per set (the method)
    retrain_seeds: int = 1  # Retrain seeds per set (each a full training of the diffusion model)
    stability: bool = False  # a second search with seed + 1 (its Jaccard overlap)

    def validate(self) -> "ConceptAuditOptions":
        if self.num_random < 1 or self.seeds < 1 or self.retrain_seeds < 1:
            raise ConfigError("--num-random, --num-seeds and --retrain-seeds must be at least 1")
        return self


def random_concept_sets(num_concepts: int, m: int, count: int, seed: int) -> list[torch.Tensor]:
    return [torch.randperm(num_concepts, generator=generator(seed, f"random-concepts-{r}"))[:m].sort().values
            for r in range(count)]


def _unit(setting, who: str, params: dict, units: torch.Tensor, seed: int, run) -> dict:
    """One (method or Retrain, set, seed) run and its scores, cached by everything that decides them."""
    key = stable_hash({"original": setting.original_key, "who": who, "params": params,
                       "units": [int(u) for u in units], "seed": seed, "generation": setting.generation.to_dict()})

    def compute() -> dict:
        with Timer() as timer:
            denoiser, seconds = run()
        scores = evaluate_generations(setting, denoiser, units)
        return {**scores, "RTE": seconds if seconds is not None else timer.seconds}

    return setting.records.get_or_compute("concept_unit", key, compute,
                                          validate=lambda r: None if isinstance(r, dict) and "UA" in r else "bad")


@dataclass
class ConceptAudit:
    setting_info: dict
    header: dict
    search: dict
    sets: dict  # kind → list of unit lists
    runs: list = field(default_factory=list)  # rows: kind, set_index, who, seed, metric → value
    weights: np.ndarray | None = None
    grids: dict = field(default_factory=dict)  # name → (images, concept ids) for the report's figures
    phases: dict = field(default_factory=dict)
    cached: dict = field(default_factory=dict)  # phases read from the cache: name → seconds they took when run
    config: dict = field(default_factory=dict)

    def values(self, kind: str, who: str, metric: str) -> list[float]:
        return [r["value"] for r in self.runs if r["kind"] == kind and r["who"] == who and r["metric"] == metric]

    def summary(self) -> dict:
        sets = {}
        for kind, units in self.sets.items():
            whos = sorted({r["who"] for r in self.runs if r["kind"] == kind})
            sets[kind] = {"num_sets": len(units), "concepts": [[int(u) for u in s] for s in units],
                          "prompts": [[self.header["prompts"][int(u)] for u in s] for s in units],
                          "methods": {who: {m: aggregate(self.values(kind, who, m)) for m in (*METRICS, "RTE")}
                                      for who in whos}}
        return {"schema": SCHEMA, "task": "generation", **{k: v for k, v in self.header.items() if k != "prompts"},
                "search": self.search, "sets": sets, "verdict": self.verdict(sets), "phases": self.phases,
                "cached_phases": self.cached, "cost_line": self.cost_line(), "config": self.config,
                "setting": self.setting_info}

    def verdict(self, sets: dict) -> list[dict]:
        """Per who (the method, Retrain): UA on the searched set minus on random sets, with an interval counting
        both sides' spread (lower UA on the searched set = harder to erase)."""
        out = []
        for who in (self.header["method"], "retrain"):
            worst = sets.get("worst_case", {}).get("methods", {}).get(who, {}).get("UA")
            rand = sets.get("random", {}).get("methods", {}).get(who, {}).get("UA")
            if not worst or not rand or worst.get("mean") is None or rand.get("mean") is None:
                continue
            diff, low, high = difference_interval(worst, rand)
            if math.isfinite(low) and high < 0:
                text = "the searched concepts stay more recognisable than random ones (harder to erase)"
            elif math.isfinite(low) and low > 0:
                text = "the searched concepts are erased more than random ones (easier to erase)"
            else:
                text = "no difference the spread can show between the searched and random concepts"
            out.append({"who": who, "measure": "UA", "worst_case": worst, "random": rand,
                        "difference": {"mean": diff, "low": low, "high": high}, "text": text})
        return out

    def cost_line(self) -> str:
        total = sum(self.phases.values())
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in self.phases.items())
        line = f"cost: {total:.1f}s run now ({parts})"
        if self.cached:
            line += "; from the cache: " + ", ".join(f"{k} (trained in {v:.1f}s)" for k, v in self.cached.items())
        return line

    def files(self) -> dict[str, bytes]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["set_kind", "set_index", "method", "seed", "metric", "value"])
        for r in self.runs:
            writer.writerow([r["kind"], r["set_index"], r["who"], r["seed"], r["metric"], repr(float(r["value"]))])
        files = {"summary.json": json_bytes(to_jsonable(self.summary(), nan_to_none=True)),
                 "results.csv": buf.getvalue().encode()}
        if self.weights is not None:
            npy = io.BytesIO()
            np.save(npy, self.weights)
            files["concept_weights.npy"] = npy.getvalue()
        if self.grids:
            npz = io.BytesIO()
            np.savez_compressed(npz, **{f"{k}__images": v[0] for k, v in self.grids.items()},
                                **{f"{k}__concepts": v[1] for k, v in self.grids.items()})
            files["generations.npz"] = npz.getvalue()
        return files

    def write(self, out: str | Path) -> Path:
        return write_result_folder(out, self.files(), owned=RESULT_FILES)


@one_intra_op_thread()
def audit_concepts(setting, method: str, params: dict | None, cfg: ConceptSearchConfig, *, seed: int = 0,
                   options: ConceptAuditOptions = ConceptAuditOptions(), resume: bool = False,
                   progress: Progress | None = None) -> ConceptAudit:
    """Search, then the method and Retrain on the searched set and on `num_random` random sets."""
    options = options.validate()
    cfg = cfg.validate()
    params = dict(params or {})
    instance = make_concept_method(method, params)
    # a loaded model (Stable Diffusion) cannot be retrained here: the audit then compares the method on the
    # searched and random concepts alone, as the paper's prompt-wise evaluation does, and says so
    can_retrain = setting.recipe is not None
    phases, cached = {}, {}  # work done by this call; what came from the cache (with the time it took then)
    for name, seconds, source in (("original", setting.train_seconds, setting.original_source),
                                  ("classifier", setting.classifier_seconds, setting.classifier_source)):
        (cached if source == "cache" else phases)[name] = seconds or 0.0
    with Timer() as timer:
        setting.pool()
    phases["own-sample pool"] = timer.seconds
    with Timer() as timer:
        found = search_concepts(setting, instance, None, cfg, seed=seed, resume=resume, progress=progress)
    phases["search"] = found.seconds if found.seconds else timer.seconds
    search = {"units": [int(u) for u in found.units], "initial_units": [int(u) for u in found.initial_units],
              "objective": found.history["objective"], "overlap_with_initial": found.history["overlap_with_initial"],
              "seconds": found.seconds, "solver": cfg.solver, "objective_name": cfg.objective,
              "final_weights": found.weights.tolist()}
    if options.stability:
        with Timer() as timer:
            twin = search_concepts(setting, instance, None, cfg, seed=seed + 1, progress=progress)
        inter = len(set(search["units"]) & {int(u) for u in twin.units})
        search["stability_jaccard"] = inter / (2 * len(search["units"]) - inter)
        phases["stability search"] = timer.seconds
    m = len(found.units)
    sets = {"worst_case": [found.units], "random": random_concept_sets(setting.num_concepts, m, options.num_random,
                                                                       seed)}
    runs: list[dict] = []
    kept: dict = {}  # the seed-0 models of each kind's first set, for the report's figures
    spent = {"retrain": 0.0, instance.name: 0.0, "original": 0.0}
    for kind, members in sets.items():
        for i, units in enumerate(members):
            w = torch.zeros(setting.num_concepts)
            w[units] = 1.0
            def keep(who, s, out, kind=kind, i=i):
                if s == 0 and i == 0:
                    kept[(kind, who)] = out[0]
                return out

            jobs = [("original", {}, 0, lambda: (setting.original, 0.0))]
            jobs += [("retrain", {}, s,
                      lambda s=s, units=units: keep("retrain", s, setting.retrain(units, s, progress)))
                     for s in range(options.retrain_seeds if can_retrain else 0)]
            jobs += [(instance.name, instance.hyperparameters(), s,
                      lambda s=s, w=w: keep("method", s, _timed(
                          lambda: instance.apply(setting, w, seed=derive_seed(seed, "unlearn", s)))))
                     for s in range(options.seeds)]
            for who, hyper, s, run in jobs:
                with Timer() as timer:
                    record = _unit(setting, who, hyper, units, s, run)
                spent[who] += timer.seconds
                for metric in (*METRICS, "RTE"):
                    value = record.get(metric)
                    if value is not None and math.isfinite(float(value)):
                        runs.append({"kind": kind, "set_index": i, "who": who, "seed": s, "metric": metric,
                                     "value": float(value)})
    phases.update({f"{who} + scoring": v for who, v in spent.items() if v or who != "retrain"})
    with Timer() as timer:
        grids = _grids(setting, instance, sets, seed, kept)
    phases["figures"] = timer.seconds
    header = {"dataset": setting.data.name, "model": "tiny-unet" if can_retrain else "stable-diffusion",
              "method": instance.name, "params": instance.hyperparameters(), "num_concepts": setting.num_concepts,
              "forget_size": m, "prompts": setting.data.prompts, "unlearn_seeds": options.seeds,
              "retrain_seeds": options.retrain_seeds if can_retrain else 0}
    if not can_retrain:
        header["retrain_note"] = "no Retrain: a loaded model cannot be retrained here"
    return ConceptAudit(setting_info=setting.describe(), header=header, search=search, sets=sets, runs=runs,
                        weights=found.weights.numpy(), grids=grids, phases=phases, cached=cached,
                        config={"search": cfg.to_dict(), "options": asdict(options), "seed": seed})


def _timed(fn):
    with Timer() as timer:
        out = fn()
    return out, timer.seconds


def _grids(setting, instance, sets: dict, seed: int, kept: dict) -> dict:
    """Generations for the report's figures: the original, the method (seed 0) and Retrain (seed 0) on the
    searched set and the first random set, one image per concept of every concept."""
    from ..scoring.generation import generate_all

    g = setting.generation
    out = {}
    for kind in ("worst_case", "random"):
        units = sets[kind][0]
        w = torch.zeros(setting.num_concepts)
        w[units] = 1.0
        for who in ("method", "retrain") if setting.recipe is not None else ("method",):
            denoiser = kept.get((kind, who))
            if denoiser is None:  # its scores came from the cache: run it again (Retrain's model is cached)
                denoiser = (setting.retrain(units, 0)[0] if who == "retrain" else
                            instance.apply(setting, w, seed=derive_seed(seed, "unlearn", 0)))
            images, concepts = generate_all(setting.model, denoiser, setting.num_concepts, 1, steps=g.steps,
                                            guidance=g.guidance, seed=1)
            out[f"{kind}__{who}"] = (images.cpu().numpy(), concepts.numpy())
    images, concepts = generate_all(setting.model, setting.original, setting.num_concepts, 1, steps=g.steps,
                                    guidance=g.guidance, seed=1)
    out["original"] = (images.cpu().numpy(), concepts.numpy())
    return out


def difference_text(d: dict) -> str:
    """'+12.50 [3.10, 21.90]', or without the interval where the spread is unknown (NaN, or None once in JSON)."""
    def num(x):
        return x is not None and math.isfinite(x)

    text = f"{d['mean']:+.2f}"
    return f"{text} [{d['low']:.2f}, {d['high']:.2f}]" if num(d.get("low")) and num(d.get("high")) else \
        f"{text} (no interval: a side has a single run)"


def format_verdict(summary: dict) -> list[str]:
    lines = []
    for v in summary["verdict"]:
        d = v["difference"]
        lines.append(f"{v['who']}: UA on the searched concepts {fmt_agg(v['worst_case'])} vs random "
                     f"{fmt_agg(v['random'])} (difference {difference_text(d)}): {v['text']}")
    return lines

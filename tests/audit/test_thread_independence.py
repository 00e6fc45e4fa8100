"""Every number an audit writes is the same whatever torch's intra-op thread count: one small search audit
(with attacks) at 1 and at 2 threads, in two fresh processes with a fresh cache each, compared number by
number in summary.json, results.csv and evaluation.json (timings and the environment aside).

On the CPU, MKL's sgemm splits the reduction of a product with a small side (the classifier's weight
gradient: 10 classes × batch × hidden) across threads, so a different thread count rounded the trained
weights differently; the SVC attack behind MIA_logit turned those ulps into different percentages."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# tiny but complete: original, reference models, search, a baseline, Retrain and the method, attacks, selection.
# Digits (10 classes: the classifier's small-sided products MKL split across threads) on 400 samples, whose batch
# shapes are the ones that must agree; 2 epochs, 2 outer steps, one baseline and one seed suffice: without the
# package's MKL_CBWR setting the two runs then differ in 8 numbers (the search objective, selection AUCs and the
# memorization set's U-LiRA AUC among them).
AUDIT = ["search", "--dataset", "digits", "--train-subset", "400", "--epochs", "2", "--outer-steps", "2",
         "--reference-models", "2", "--baselines", "memorization", "--num-random", "1", "--seeds", "1",
         "--no-stability", "--attacks", "lira,epsilon,loss,ks,tow", "--num-models", "4", "--select-models", "4",
         "--mia-resamples", "1"]
TIMING = ("seconds", "rte", "cost_ratio", "cost_reference", "time", "environment", "code_version", "started",
          "command_line", "cache", "out")


def _is_timing(path: str) -> bool:
    return any(word in part.lower() for part in path.split("/") for word in TIMING)


def _numbers(value, path: str = "") -> dict[str, object]:
    """Every leaf of a JSON document by its path, timing and provenance leaves left out."""
    if _is_timing(path):
        return {}
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _numbers(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _numbers(item, f"{path}/{i}").items()}
    return {path: value}


def _csv_rows(path: Path) -> dict[str, str]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {"/".join(row[k] for k in row if k != "value"): row["value"] for row in rows
            if not _is_timing(row["metric"])}


def _start_audit(tmp_path: Path, threads: int) -> tuple[subprocess.Popen, Path, Path]:
    out, cache, err = tmp_path / f"out{threads}", tmp_path / f"cache{threads}", tmp_path / f"stderr{threads}.txt"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "WORSTFORGET_CACHE": str(cache),
           # the two runs share the cores: idle OpenMP threads sleep instead of spinning (no effect on the numbers)
           "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MKL_CBWR", None)  # the library's own setting, not the caller's, must make the runs agree
    code = ("import sys, torch; torch.set_num_threads(int(sys.argv[1])); from worstforget.cli import main; "
            "sys.argv = ['worstforget', *sys.argv[2:]]; main()")
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code, str(threads), "--quiet", *AUDIT, "--out", str(out)],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    return proc, out, err


@pytest.mark.slow
def test_an_audit_writes_the_same_numbers_at_one_and_two_threads(tmp_path):
    # both audits at once, each in its own fresh process and cache: mostly single-threaded Python, they overlap
    runs = [_start_audit(tmp_path, threads) for threads in (1, 2)]
    try:
        for proc, _, err in runs:
            assert proc.wait(timeout=900) == 0, err.read_text()[-3000:]
    finally:
        for proc, _, _ in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    one, two = (out for _, out, _ in runs)
    differ: dict[str, tuple] = {}
    for name in ("summary.json", "evaluation.json"):
        a, b = (_numbers(json.loads((d / name).read_text())) for d in (one, two))
        assert a.keys() == b.keys(), name
        differ.update({f"{name}{k}": (a[k], b[k]) for k in a if a[k] != b[k] and not _both_nan(a[k], b[k])})
    a, b = _csv_rows(one / "results.csv"), _csv_rows(two / "results.csv")
    assert a.keys() == b.keys()
    differ.update({f"results.csv:{k}": (a[k], b[k]) for k in a if a[k] != b[k]})
    assert not differ, f"{len(differ)} numbers differ, e.g. {dict(list(differ.items())[:12])}"


def _both_nan(a, b) -> bool:
    return isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)

"""worstforget: audit machine-unlearning methods on their worst-case forget sets.

Library entry points (imported lazily so the CLI's --help stays fast):

    from worstforget import prepare_setting, SearchConfig, run_search_audit, write_outputs
    setting = prepare_setting(dataset="digits")
    audit = run_search_audit(setting, "finetune", {}, SearchConfig())
    write_outputs("out", audit)
"""
from __future__ import annotations

import importlib
import os
from typing import Any

# Thread-count independence. MKL's sgemm splits the reduction of a product with a small side (a classifier's
# weight gradient: classes × batch × hidden) across threads, so serial runs, pool workers and OMP_NUM_THREADS
# settings trained weights that differed in their last bits — and the SVC behind MIA_logit turned those
# bits into different percentages. MKL's strict conditional numerical reproducibility makes its products
# independent of the thread count; MKL reads the setting once, at its first call, hence here, before this
# package imports torch. A caller's own MKL_CBWR is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"

_EXPORTS = {
    "prepare_setting": "setting", "Setting": "setting", "ModelSpec": "training.original",
    "run_unit": "audit.units", "compare_on_set": "audit.units", "compare_methods": "audit.units",
    "SearchConfig": "search", "search_worst_case": "search", "project_capped_simplex": "search", "SOLVERS": "search",
    "run_search_audit": "audit.worst_case", "AuditOptions": "audit.worst_case", "write_outputs": "audit.worst_case",
    "METHODS": "methods", "UnlearningMethod": "methods", "register_method": "methods", "make_method": "methods",
    "DATASETS": "datasets", "load_dataset": "datasets", "MODELS": "training.models", "build_model": "training.models",
    "ATTACKS": "scoring.attacks", "evaluate_unlearning": "audit.attack_eval", "lira_on_original": "audit.membership",
    "SELECTORS": "forget_sets", "evaluate": "scoring.metrics", "TrainConfig": "training.loop", "fit": "training.loop",
    "Registry": "core.registry", "WorstforgetError": "core.errors", "ConfigError": "core.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'worstforget' has no attribute {name!r}")

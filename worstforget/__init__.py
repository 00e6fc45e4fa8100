"""worstforget: audit machine-unlearning methods on their worst-case forget sets.

Library entry points (imported lazily so the CLI's --help stays fast):

    from worstforget import prepare_setting, SearchConfig, run_search_audit, write_outputs
    setting = prepare_setting(dataset="digits")
    audit = run_search_audit(setting, "finetune", {}, SearchConfig())
    write_outputs("out", audit)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "prepare_setting": "audit", "run_unit": "audit", "compare_on_set": "audit", "compare_methods": "audit",
    "Setting": "audit",
    "SearchConfig": "search", "search_worst_case": "search", "project_capped_simplex": "search", "SOLVERS": "search",
    "run_search_audit": "worst_case", "AuditOptions": "worst_case", "write_outputs": "worst_case",
    "METHODS": "unlearn", "UnlearningMethod": "unlearn", "register_method": "unlearn", "make_method": "unlearn",
    "DATASETS": "datasets", "load_dataset": "datasets", "MODELS": "models", "build_model": "models",
    "ATTACKS": "attacks", "evaluate_unlearning": "attacks", "lira_on_original": "attacks",
    "SELECTORS": "selectors", "evaluate": "metrics", "TrainConfig": "train", "fit": "train",
    "ModelSpec": "original", "Registry": "registry", "WorstforgetError": "errors", "ConfigError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'worstforget' has no attribute {name!r}")

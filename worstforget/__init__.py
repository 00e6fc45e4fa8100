"""worstforget: audit machine-unlearning methods on their worst-case forget sets.

The library calls behind the commands (imported lazily so the CLI's --help stays fast):

    >>> import worstforget as wf
    >>> setting = wf.prepare_setting(dataset="synthetic", train_overrides={"epochs": 2})
    >>> audit = wf.audit_worst_case(setting, "finetune", {"epochs": 1},
    ...                             wf.SearchConfig(solver="first-order", outer_steps=2, forget_ratio=0.1),
    ...                             options=wf.AuditOptions(num_random=1, seeds=1, stability=False, baselines=[]))
    >>> folder = audit.write("worstforget-out/search")  # doctest: +SKIP

Every command is one of these calls; see the README's *Architecture* table.
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

# name → module (relative to this package); exactly the calls the README's library section shows
_EXPORTS = {
    "prepare_setting": "setting", "Setting": "setting",
    "SearchConfig": "search", "AuditOptions": "audit.worst_case", "audit_worst_case": "audit.worst_case",
    "evaluate_sets": "audit.attack_eval", "unlearn_on_set": "audit.units", "compare_methods": "audit.units",
    "tune": "audit.tune", "load_result": "report", "render_markdown": "report", "render_html": "report",
    "render_json": "report", "random_forget_set": "forget_sets", "load_forget_set": "forget_sets",
    "register_method": "methods", "UnlearningMethod": "methods",
    "WorstforgetError": "core.errors", "ConfigError": "core.errors",
    # the generative (prompt-wise) task: README "Concept unlearning"
    "prepare_generative_setting": "setting.generative", "ConceptSearchConfig": "search.concepts",
    "search_concepts": "search.concepts", "ConceptAuditOptions": "audit.concepts", "audit_concepts": "audit.concepts",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'worstforget' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

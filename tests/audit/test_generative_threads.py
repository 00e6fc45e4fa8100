"""The generative audit's numbers do not depend on how many intra-op threads the caller runs torch with."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")

from concept_cases import TINY_GENERATION, TINY_RECIPE, tiny_search  # noqa: E402

TIMING = ("RTE",)


def _numbers(summary: dict) -> dict:
    """Every number of the sets and the verdict, timings aside."""
    out = {}
    for kind, block in summary["sets"].items():
        out[(kind, "concepts")] = block["concepts"]
        for who, metrics in block["methods"].items():
            for metric, agg in metrics.items():
                if metric not in TIMING:
                    out[(kind, who, metric)] = tuple(None if v is None or (isinstance(v, float) and math.isnan(v))
                                                     else v for v in (agg.get("mean"), agg.get("std")))
    out["search"] = (summary["search"]["units"], summary["search"]["objective"])
    return out


def _audit(threads: int, cache: str) -> dict:
    from worstforget.audit.concepts import ConceptAuditOptions, audit_concepts
    from worstforget.setting.generative import prepare_generative_setting
    from worstforget.training.concept_classifier import ClassifierConfig

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        setting = prepare_generative_setting(recipe=TINY_RECIPE(), classifier=ClassifierConfig(epochs=1),
                                             generation=TINY_GENERATION(), device="cpu", cache_dir=cache)
        audit = audit_concepts(setting, "esd", {"steps": 3, "per_concept": 1}, tiny_search(),
                               options=ConceptAuditOptions(num_random=1, seeds=1))
        assert torch.get_num_threads() == threads  # the caller's setting is given back
        return _numbers(audit.summary())
    finally:
        torch.set_num_threads(before)


def test_a_generative_audit_gives_the_same_numbers_at_one_and_two_threads(tmp_path):
    one, two = _audit(1, str(tmp_path / "one")), _audit(2, str(tmp_path / "two"))
    differ = sorted(str(k) for k in one if one[k] != two.get(k))
    assert not differ, differ

"""The search's cost in one sentence: every part the command ran, reference models marked when shared."""
from __future__ import annotations


def cost_phrase(trace: dict) -> str:
    """'search 0.9s + stability search 0.9s + 16 reference models 18.4s (trained now; shared, once per setting)
    = 20.2s (3.61× training the original)': every part the command ran, with the reference models marked when
    they came from the cache (then outside the total)."""
    ratio = trace.get("cost_ratio")
    parts = [f"search {trace['seconds']:.1f}s" + (f" ({ratio:.2f}×)" if ratio is not None else "")]
    if trace.get("stability_seconds") is not None:
        parts.append(f"stability search {trace['stability_seconds']:.1f}s")
    if trace.get("selection_seconds") is not None:
        sel = trace.get("selection") or {}
        parts.append(f"attack-validated selection {trace['selection_seconds']:.1f}s "
                     f"({len(sel.get('scores', {}))} candidates, {sel.get('num_models', '?')}+"
                     f"{sel.get('num_models', '?')} models)")
    refs = trace.get("reference_models")
    if refs:
        took = "time unknown" if refs.get("seconds") is None else f"{refs['seconds']:.1f}s"
        if refs.get("source") == "trained":
            parts.append(f"{refs['num_models']} reference models {took} (trained now; shared, once per setting)")
    text = " + ".join(parts)
    if "total_seconds" in trace:
        total_ratio = trace.get("total_cost_ratio")
        text += f" = {trace['total_seconds']:.1f}s" + (f" ({total_ratio:.2f}× {trace['cost_reference']})"
                                                       if total_ratio is not None else "")
    elif ratio is not None:  # results written before the cost breakdown
        text += f" ({trace['cost_reference']})"
    if refs and refs.get("source") == "cache":
        took = "time unknown" if refs.get("seconds") is None else f"{refs['seconds']:.1f}s when trained"
        text += f"; {refs['num_models']} reference models from the cache (shared, once per setting: {took})"
    return "search: " + text[len("search "):]

"""Worst-case forget-set search: the bi-level problem, its three solvers and the upper-level loop."""
from .config import SearchConfig
from .loop import SearchResult, jaccard, overlap, search_worst_case
from .projection import project_capped_simplex, top_m
from .solvers import SOLVERS, Hypergradient

__all__ = ["SearchConfig", "SearchResult", "SOLVERS", "Hypergradient", "search_worst_case",
           "project_capped_simplex", "top_m", "overlap", "jaccard"]

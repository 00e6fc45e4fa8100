"""Concept unlearning for diffusion models (the prompt-wise setting): ESD, concept ablation, gradient ascent and
Retrain, each written once against per-concept weights; one registry."""
from . import ablation, ascent, esd, retrain  # noqa: F401  (register the methods)
from .base import (
    CONCEPT_METHODS,
    ConceptMethod,
    ConceptRun,
    Draws,
    make_concept_method,
    parse_concept_params,
    register_concept_method,
)

__all__ = ["CONCEPT_METHODS", "ConceptMethod", "ConceptRun", "Draws", "make_concept_method", "parse_concept_params",
           "register_concept_method"]

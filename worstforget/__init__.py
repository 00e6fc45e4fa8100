"""worstforget: audit machine-unlearning methods on their worst-case forget sets."""
__version__ = "0.1.0"

"""`python -m worstforget` runs the CLI."""
from .cli import main

main()

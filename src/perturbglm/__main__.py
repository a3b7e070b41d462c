"""python -m perturbglm: the command line."""

from .cli import entry

entry()

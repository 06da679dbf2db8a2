"""`python -m ocimirror`: the same as the `ocimirror` command."""

from .cli import main

main()

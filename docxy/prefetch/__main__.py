"""``python -m docxy.prefetch``: the same as the ``docxy-prefetch`` command."""

from .cli import main

main()

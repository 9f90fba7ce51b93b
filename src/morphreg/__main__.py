"""``python -m morphreg``: the command line."""

from .cli import main

raise SystemExit(main())

"""``python -m morphreg.cli``: the command line."""

from . import main

raise SystemExit(main())

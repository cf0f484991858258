"""``python -m examples.minbert``: see :mod:`examples.minbert.cli`."""

from .cli import main

raise SystemExit(main())

"""`python -m iabn_zoo` runs the command line."""

from .cli import main

raise SystemExit(main())

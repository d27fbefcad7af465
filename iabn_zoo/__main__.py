"""`python -m iabn_zoo` runs the command line."""

from .cli.main import main

raise SystemExit(main())

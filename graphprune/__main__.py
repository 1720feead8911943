"""``python -m graphprune`` runs the command line (``graphprune --help``)."""
from .cli import main

raise SystemExit(main())

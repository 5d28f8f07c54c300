"""``python -m datagraph``: the ``datagraph`` command."""

from .cli import main

raise SystemExit(main())

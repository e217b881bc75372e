"""``python -m emoexp`` is the ``emoexp`` command."""

from .cli import main

raise SystemExit(main())

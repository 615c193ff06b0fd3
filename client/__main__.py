"""``python -m client``: see ``client.cli``."""

from fmdetect.client.cli import main

raise SystemExit(main())

"""``python -m embedshare.service``: run the service (what ``embedshare serve`` starts)."""

import sys

from .server import main

sys.exit(main())

"""``python -m embedshare.service``: run the service (what ``embedshare serve`` starts)."""

import sys

from .process import main

sys.exit(main())

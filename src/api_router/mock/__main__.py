"""``python -m api_router.mock``: run the simulated upstream (``server.main``)."""

import sys

from api_router.mock.server import main

sys.exit(main())

"""``python -m proxy``: the same as the ``pgreactive`` command."""

import sys

from proxy.cli import main

sys.exit(main())

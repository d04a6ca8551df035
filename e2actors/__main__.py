"""``python -m e2actors ...`` is the ``e2actors`` command."""

import sys

from e2actors.cli import main

sys.exit(main())

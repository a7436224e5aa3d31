"""``python -m autochunk_tvm ...`` is the ``autochunk-tvm`` command."""

import sys

from .cli import main

sys.exit(main())

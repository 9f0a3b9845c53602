"""``python -m sandbox.cli``: the ``agentbox`` command."""

import sys

from sandbox.cli import main

sys.exit(main())

"""``python -m agent_wake``: the ``agent-wake`` command."""

import sys

from agent_wake.cli import main

sys.exit(main())

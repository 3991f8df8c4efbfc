"""``python -m kevo_repl`` is the ``kevo-repl`` command."""

import sys

from kevo_repl.cli import main

sys.exit(main())

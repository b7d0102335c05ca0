"""`python -m bkctl`: the same as the bkctl command (rsync runs it as a local restore's remote shell)."""

import sys

from .cli import main

sys.exit(main())

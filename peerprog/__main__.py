"""``python -m peerprog``."""

import sys

from peerprog.cli.main import main

sys.exit(main())

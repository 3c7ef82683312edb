"""``python -m kiln``: the ``kiln`` command."""

import sys

from kiln.driver.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m tl_helpers``: the course's command line (see :mod:`tl_helpers.cli`)."""

import sys

from tl_helpers.cli import main

if __name__ == "__main__":
    sys.exit(main())

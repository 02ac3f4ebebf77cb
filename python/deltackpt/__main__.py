"""`python -m deltackpt`: the command line, the same as the `deltackpt` script."""

import sys

from .cli import main

sys.exit(main())

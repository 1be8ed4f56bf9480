"""`python -m foleyrt.cli`: the `foleyrt` console script without installing it."""

import sys

from foleyrt.cli import main

sys.exit(main())

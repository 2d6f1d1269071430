"""`python -m training ...` is the `intellioptics` command line."""

import sys

from training.cli import main

sys.exit(main())

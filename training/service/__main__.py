"""`python -m training.service`: the trainer process (see training.service)."""

import os
import sys

# Sleeping (not spinning) OpenMP workers, as the command line does; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from training.service.loop import main

sys.exit(main())

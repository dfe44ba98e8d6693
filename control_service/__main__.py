"""`python -m control_service`: the same as the `control-service` script."""

import sys

from control_service.cli import main

sys.exit(main())

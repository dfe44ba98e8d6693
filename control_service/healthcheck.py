"""`python -m control_service.healthcheck`: the probe's old module path, kept working.

Container HEALTHCHECKs and Kubernetes exec probes written before the CLI moved into
`control_service/cli/` call this path; it runs `control_service.cli.healthcheck` unchanged.
"""

import sys

from control_service.cli.healthcheck import main

if __name__ == "__main__":
    sys.exit(main())

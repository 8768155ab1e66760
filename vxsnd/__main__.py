"""`python -m vxsnd`: the service node."""

import sys

from vxsnd.cli import main

sys.exit(main())

"""`python -m vxrd` runs the agent."""

from vxrd.cli import main

raise SystemExit(main())

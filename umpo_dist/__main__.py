"""`python -m umpo_dist ...` is the `umpo` command."""

import sys

from umpo_dist.ops.cli import main

sys.exit(main())

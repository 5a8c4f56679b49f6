"""`python -m seqpipe ...`: the same as the `seqpipe` command."""

import sys

from seqpipe.commands.cli import main

sys.exit(main())

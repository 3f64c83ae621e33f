import sys

from snnet.cli import main

sys.exit(main())

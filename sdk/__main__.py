import sys

from edgecpm.cli import main

sys.exit(main())

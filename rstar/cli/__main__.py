import sys

from rstar.cli import main

sys.exit(main())

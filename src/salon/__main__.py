import sys

from salon.cli import main

sys.exit(main())

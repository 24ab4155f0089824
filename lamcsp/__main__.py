import sys

from lamcsp.cli import main

sys.exit(main())

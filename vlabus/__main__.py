import sys

from vlabus.cli import main

sys.exit(main())

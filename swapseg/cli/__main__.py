import sys

from swapseg.cli import main

sys.exit(main())

import sys

from megl.cli import main

sys.exit(main())

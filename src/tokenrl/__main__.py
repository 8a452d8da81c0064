import sys

from tokenrl.cli import main

sys.exit(main())

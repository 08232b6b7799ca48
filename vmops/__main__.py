import sys

from vmops.cli.main import main

sys.exit(main())

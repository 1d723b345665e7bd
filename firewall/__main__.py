import sys

from firewall.cli import main

sys.exit(main())

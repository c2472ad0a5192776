import sys

from spanqa.cli import main

sys.exit(main())

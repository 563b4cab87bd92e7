"""``python -m gdlab ...`` is the ``gdlab`` command (for machines where the script is not installed)."""
import sys

from gdlab.book.cli import main

sys.exit(main())

"""``python -m onnxpress``: the command line, as the ``onnxpress`` script runs it."""
import sys

from onnxpress.cli import main

sys.exit(main())

"""`python -m eclipse_napari.convert`: an official ECLIPSE checkpoint to a model folder.

The code is in `eclipse_napari.cli.convert`.
"""

from .cli.convert import main

if __name__ == "__main__":
    raise SystemExit(main())

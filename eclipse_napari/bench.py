"""`python -m eclipse_napari.bench`: the continual benchmark, headless.

The code is in `eclipse_napari.cli.bench`.
"""

from .cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())

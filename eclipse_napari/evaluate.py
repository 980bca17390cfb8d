"""`python -m eclipse_napari.evaluate`: PQ of COCO-panoptic predictions against ground truth.

The code is in `eclipse_napari.cli.evaluate`.
"""

from .cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())

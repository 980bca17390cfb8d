"""`python -m eclipse_napari.predict`: panoptic predictions of image files in COCO-panoptic format.

The code is in `eclipse_napari.cli.predict`.
"""

from .cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m eclipse_napari.make_scenes`: generated panoptic scenes in COCO-panoptic format.

The code is in `eclipse_napari.cli.make_scenes`.
"""

from .cli.make_scenes import main

if __name__ == "__main__":
    raise SystemExit(main())

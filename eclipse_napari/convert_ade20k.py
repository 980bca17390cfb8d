"""`python -m eclipse_napari.convert_ade20k`: the ADE20K release to COCO-panoptic format.

The code is in `eclipse_napari.cli.convert_ade20k`.
"""

from .cli.convert_ade20k import main

if __name__ == "__main__":
    raise SystemExit(main())

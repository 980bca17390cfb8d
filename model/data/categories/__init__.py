"""Dataset facts the package carries as its own data: category lists and class orders."""

import json
from importlib import resources

from ...network.classes import ClassSpec

# The COCO 83-x class order of the published protocol, as contiguous panoptic ids 1..133 (83 base, then 50).
COCO_83_ORDER = (
    1, 3, 10, 47, 58, 9, 88, 16, 126, 120, 17, 129, 35, 119, 59, 57, 54, 90, 75, 38, 80, 48, 131, 56, 95, 25, 43,
    2, 68, 110, 32, 14, 29, 11, 7, 52, 83, 102, 84, 73, 5, 45, 117, 93, 87, 46, 118, 34, 61, 19, 77, 111, 63, 98,
    130, 66, 79, 97, 33, 86, 127, 104, 64, 49, 36, 6, 91, 50, 112, 8, 65, 132, 92, 27, 122, 22, 51, 85, 115, 28,
    89, 70, 62,
    12, 101, 108, 125, 123, 39, 81, 20, 40, 41, 114, 128, 74, 18, 99, 100, 60, 30, 124, 69, 37, 13, 23, 116, 55,
    26, 121, 71, 67, 106, 133, 42, 107, 105, 109, 82, 103, 76, 94, 24, 15, 78, 53, 21, 96, 72, 113, 44, 31, 4,
)


def _load(name: str) -> list[dict]:
    return json.loads(resources.files(__package__).joinpath(name).read_text())


def ade20k_categories() -> list[dict]:
    """150 ADE20K classes, ids 1..150 in the standard (and continual) order."""
    return _load("ade20k_150_categories.json")


def coco_panoptic_categories() -> list[dict]:
    """133 COCO panoptic classes with their file `id` and `contiguous_id` 1..133."""
    return _load("coco_panoptic_133_categories.json")


def class_list(dataset: str) -> list[ClassSpec]:
    """Classes in learning order: ADE identity order; COCO in the 83-x order."""
    if dataset == "ade20k":
        cats = ade20k_categories()
    elif dataset == "coco":
        by_contiguous = {c["contiguous_id"]: c for c in coco_panoptic_categories()}
        cats = [by_contiguous[i] for i in COCO_83_ORDER]
    else:
        raise ValueError(f"unknown dataset {dataset!r}; expected 'ade20k' or 'coco'")
    return [ClassSpec(c["name"].strip(), bool(c["isthing"]), tuple(c["color"])) for c in cats]

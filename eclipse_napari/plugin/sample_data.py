"""Sample data: generated scenes holding classes the shipped model knows (disc, star, sky, grass, ...)
and classes it has never seen (horse, ellipse, sand, wood, ...), to try predict -> teach -> learn."""

import numpy as np

SAMPLE_SEED, SAMPLE_SIZE = 7, 256
# Scenes (of seed 7) chosen because each shows sand (a class the shipped model does not know; it learns
# well from three painted images, see benchmarks/learn_speed.py) and at least four known classes; the
# first two also show a horse.
SAMPLE_SCENES = (19, 28, 32, 64)
SAMPLE_NEW_CLASS = "sand"


def sample_scene(number: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(image uint8 [H,W,3], panoptic id map, segments) of sample scene `number` (1-based)."""
    from model.data.scenes import generate_scene

    if not 1 <= number <= len(SAMPLE_SCENES):
        raise ValueError(f"sample scenes are numbered 1..{len(SAMPLE_SCENES)}, got {number}")
    return generate_scene(SAMPLE_SCENES[number - 1], seed=SAMPLE_SEED, size=SAMPLE_SIZE)


def class_instances(number: int, class_name: str) -> np.ndarray:
    """Ground-truth instance map (0 = other, 1..k) of one class in a sample scene (tests, screenshots)."""
    from model.data.scenes import SCENE_CLASSES

    _, ids, segments = sample_scene(number)
    wanted = [s["id"] for s in segments if SCENE_CLASSES[s["category_id"] - 1].name == class_name]
    out = np.zeros(ids.shape, np.int32)
    for k, seg_id in enumerate(wanted, start=1):
        out[ids == seg_id] = k
    return out


def make_sample_data():
    """napari sample-data contribution: one RGB image layer per scene."""
    return [(sample_scene(n)[0], {"name": f"scene {n}"}, "image") for n in range(1, len(SAMPLE_SCENES) + 1)]

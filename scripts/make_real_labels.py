"""Makes the labels of the real test images (scikit-image's bundled `immunohistochemistry` and `retina`
photos) that `benchmarks/learn_cases.py` and the tests use, and overlays to check them by eye.

    python scripts/make_real_labels.py                 # writes tests/data/{ihc,retina}/*.png
    python scripts/make_real_labels.py --overlays DIR  # and the overlays used to check them

Each is a classical pipeline followed by the corrections found necessary when its result was looked at
(the READMEs beside the labels say what was checked, how, and what stays uncertain). Deterministic:
running it again with scikit-image 0.26 gives the same files.
"""

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def ihc_labels() -> tuple[np.ndarray, np.ndarray]:
    """(gland bool [512, 512]: the DAB-stained (brown) epithelium, lumens excluded; stromal nuclei
    int32 [512, 512]: one label per hematoxylin-stained (blue) nucleus outside the epithelium)."""
    from skimage import color, data, filters, morphology, segmentation

    image = data.immunohistochemistry()
    hed = color.rgb2hed(image)
    dab = filters.gaussian(hed[..., 2], 4)
    t = filters.threshold_otsu(dab)
    gland = morphology.remove_small_objects(dab > t, max_size=1999)
    # Correction 1: filling every hole also filled the glands' white lumens; fill only small holes.
    gland = morphology.remove_small_holes(gland, max_size=399)
    gland = morphology.binary_opening(gland, morphology.disk(3))
    # Correction 2: pale notches at the epithelium's edge were left to the stroma (and their pale
    # cytoplasm counted as nuclei): close them.
    gland = morphology.binary_closing(np.pad(gland, 8, mode="edge"), morphology.disk(6))[8:-8, 8:-8]
    gland = morphology.remove_small_objects(gland, max_size=1999)

    hema = filters.gaussian(hed[..., 0], 1)
    stroma = ~morphology.binary_dilation(gland, morphology.disk(2))
    nuclei = (hema > filters.threshold_otsu(hema[stroma])) & stroma
    nuclei = morphology.binary_opening(nuclei, morphology.disk(1))
    nuclei = ndi.binary_fill_holes(nuclei)
    nuclei = morphology.remove_small_objects(nuclei, max_size=19)
    distance = ndi.distance_transform_edt(nuclei)
    # Correction 3: seeds at every local maximum (min_distance 4) cut the long, thin stromal nuclei
    # into two or three; h-maxima of height 1.5 keep one seed per nucleus (touching pairs still split).
    seeds, _ = ndi.label(morphology.h_maxima(filters.gaussian(distance, 1), 1.5))
    labels = segmentation.watershed(-distance, seeds, mask=nuclei)
    labels = morphology.remove_small_objects(labels, max_size=24)
    # Correction 4: drop what is brown on average (pale cytoplasm at the epithelium's edge).
    ids = np.arange(1, labels.max() + 1)
    mean_dab = ndi.mean(dab, labels, ids) if len(ids) else np.zeros(0)
    labels[np.isin(labels, ids[mean_dab > t])] = 0
    labels, _, _ = segmentation.relabel_sequential(labels)
    return gland, labels.astype(np.int32)


def retina_labels() -> np.ndarray:
    """vessels bool [1411, 1411]: the retinal vessels visible at full resolution."""
    from skimage import data, filters, morphology

    image = data.retina()
    green = image[..., 1].astype(float) / 255
    field = morphology.binary_erosion(image.sum(-1) > 60, morphology.disk(10))  # inside the fundus disc
    ridges = filters.sato(green, sigmas=[1, 2, 3, 4], black_ridges=True)
    ridges[~field] = 0
    high, low = np.percentile(ridges[field], [93, 88])
    vessels = filters.apply_hysteresis_threshold(ridges, low, high)
    vessels = morphology.remove_small_objects(vessels, max_size=149)
    return morphology.remove_small_holes(vessels, max_size=19)


def overlay(image: np.ndarray, masks: list[tuple[np.ndarray, tuple]], zoom: int = 1) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    out = image.copy()
    for labels, colour in masks:
        out[find_boundaries(labels.astype(np.int32), mode="inner")] = colour
    return np.kron(out, np.ones((zoom, zoom, 1), np.uint8)) if zoom > 1 else out


def main(argv=None) -> int:
    from skimage import data

    from model.io.images import write_png

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--overlays", type=Path, default=None, help="also write overlays for checking by eye here")
    args = p.parse_args(argv)
    gland, nuclei = ihc_labels()
    vessels = retina_labels()
    (DATA / "ihc").mkdir(parents=True, exist_ok=True)
    (DATA / "retina").mkdir(parents=True, exist_ok=True)
    write_png(DATA / "ihc" / "gland.png", gland.astype(np.uint8) * 255)
    write_png(DATA / "ihc" / "nuclei.png", nuclei.astype(np.uint16))
    write_png(DATA / "retina" / "vessels.png", vessels.astype(np.uint8) * 255)
    print(f"ihc: gland {100 * gland.mean():.1f}% of the pixels, {nuclei.max()} stromal nuclei; "
          f"retina: vessels {100 * vessels.mean():.1f}% of the pixels")
    if args.overlays:
        args.overlays.mkdir(parents=True, exist_ok=True)
        ihc = overlay(data.immunohistochemistry(), [(gland, (0, 255, 0)), (nuclei, (255, 255, 0))])
        write_png(args.overlays / "ihc.png", ihc)
        for k, (y, x) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
            write_png(args.overlays / f"ihc_{k}.png", np.kron(ihc[y:y + 256, x:x + 256], np.ones((3, 3, 1), np.uint8)))
        retina = overlay(data.retina(), [(vessels, (255, 255, 0))])
        write_png(args.overlays / "retina.png", retina)
        for k, (y, x) in enumerate([(200, 500), (456, 756), (760, 500), (1016, 756)]):
            write_png(args.overlays / f"retina_{k}.png", np.kron(retina[y:y + 256, x:x + 256], np.ones((3, 3, 1), np.uint8)))
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())

"""The pieces of benchmarks/learn_quality.py: the crowded scenes, the hand-made labels of the real
images (coins, immunohistochemistry, retina), the pixel-classifier peers with their post-processing
fixed before held-out images are scored, and the one-class PQ."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from model.data.crowded import MAX_INSTANCES, MIN_INSTANCES, background_strokes, crowded_scene  # noqa: E402
from model.interactive.config import Example  # noqa: E402
from model.io.images import read_image  # noqa: E402

DATA = Path(__file__).parent / "data"
COINS = DATA / "coins" / "instances.png"


def test_crowded_scenes_are_deterministic_crowded_and_touching():
    image, instances = crowded_scene(3)
    again, same = crowded_scene(3)
    assert np.array_equal(image, again) and np.array_equal(instances, same)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    counts = [int(crowded_scene(i)[1].max()) for i in range(6)]
    assert all(MIN_INSTANCES * 0.5 <= c <= MAX_INSTANCES for c in counts) and max(counts) > 60
    # Touching: some instance pixels have a pixel of another instance as a 4-neighbour.
    a, b = instances[:, :-1], instances[:, 1:]
    assert ((a > 0) & (b > 0) & (a != b)).sum() > 20
    strokes = background_strokes(instances, count=5, seed=1)
    assert strokes.sum() > 100 and not (strokes & (instances > 0)).any()


def test_coins_labels_match_the_photo():
    from skimage import data

    labels = read_image(COINS)
    assert labels.shape == data.coins().shape and int(labels.max()) == 24
    areas = np.bincount(labels.ravel())[1:]
    assert len(areas) == 24 and areas.min() > 900  # every coin labelled, none a fragment
    # The coins are bright on a dark background: the labels follow them.
    coins = data.coins()
    assert coins[labels > 0].mean() > coins[labels == 0].mean() + 60


def test_ihc_and_retina_labels_match_their_photos():
    """The labels follow what they label: stained epithelium is brown (DAB), stromal nuclei blue
    (hematoxylin) and outside it, vessels darker than the fundus around them."""
    from skimage import color, data

    ihc = data.immunohistochemistry()
    gland = read_image(DATA / "ihc" / "gland.png") > 0
    nuclei = read_image(DATA / "ihc" / "nuclei.png").astype(int)
    hed = color.rgb2hed(ihc)
    assert gland.shape == nuclei.shape == ihc.shape[:2] and 0.4 < gland.mean() < 0.7
    assert hed[..., 2][gland].mean() > 2 * hed[..., 2][~gland].mean()
    assert 100 <= nuclei.max() <= 200 and not (gland & (nuclei > 0)).any()
    assert hed[..., 0][nuclei > 0].mean() > 1.5 * hed[..., 0][(nuclei == 0) & ~gland].mean()
    areas = np.bincount(nuclei.ravel())[1:]
    assert areas.min() >= 25 and len(areas) == nuclei.max()
    retina = data.retina()
    vessels = read_image(DATA / "retina" / "vessels.png") > 0
    assert vessels.shape == retina.shape[:2] and 0.05 < vessels.mean() < 0.12
    from scipy import ndimage

    near = ndimage.binary_dilation(vessels, iterations=4) & ~vessels & (retina.sum(-1) > 60)
    assert retina[..., 1][vessels].mean() < retina[..., 1][near].mean() - 10


def test_the_cases_paint_as_they_say():
    from learn_cases import build_cases

    cases = {c.name: c for c in build_cases("tuning", ["coins", "coins partial", "coins few", "ihc few",
                                                       "retina partial"])}
    assert cases["coins"].painted[0][0].complete and not cases["coins few"].painted[0][0].complete
    few = cases["coins few"].painted[0][0]
    assert few.background is None and len(np.unique(few.instances)) - 1 == 4
    partial = cases["coins partial"].painted[0][0]
    assert partial.background.any() and not (partial.background & (partial.instances > 0)).any()
    ihc = cases["ihc few"]
    assert [c for c, _ in ihc.classes] == ["stromal nucleus", "gland"] and len(ihc.painted) == 2
    assert ihc.painted[1][0].instances.any() and len(ihc.heldout[0][1]) == 2
    retina = cases["retina partial"].painted[0][0]
    assert retina.image.shape == (512, 512, 3) and retina.background.any()


def test_peers_and_their_postprocessing_fixed_before_held_out_images_are_scored(monkeypatch, tmp_path):
    """On the tuning split a peer scores both post-processings and keeps the better; on the held-out
    split it uses only the one fixed in advance (read from the choice file), and without that file the
    held-out run stops before anything is scored."""
    pytest.importorskip("sklearn")
    import learn_quality
    from learn_cases import Case
    from peers import ForestPeer, build_peer

    image, instances = crowded_scene(1, size=128)
    held_image, held = crowded_scene(2, size=128)
    case = Case("tiny", [("grain", True)], [[Example(image, instances, complete=True)]], [(held_image, [held])], [])
    peer = build_peer("filter forest", [True])
    peer.max_pixels, peer.trees = 3000, 10
    monkeypatch.setattr(learn_quality, "build_peer", lambda name, is_thing, model: peer)
    used = []
    real = ForestPeer.predict
    monkeypatch.setattr(ForestPeer, "predict", lambda self, img, post, maps=None: used.append(post) or real(
        self, img, post, maps))
    tuning = learn_quality.run_peer(case, "filter forest", None, None)
    assert set(used) == {"components", "watershed"} and tuning["postprocessing"] in used
    assert tuning["classes"][0] == tuning["both"][tuning["postprocessing"]][0]
    used.clear()
    heldout = learn_quality.run_peer(case, "filter forest", None, "watershed")
    assert used == ["watershed"] and heldout["postprocessing"] == "watershed" and "both" not in heldout
    with pytest.raises(SystemExit, match="--split tuning` first"):
        learn_quality.peer_choices("heldout", tmp_path / "missing.json")
    assert learn_quality.peer_choices("tuning", tmp_path / "missing.json") == {}
    shipped = learn_quality.peer_choices("heldout")  # the committed choice covers every real case and peer
    from learn_cases import CASE_NAMES
    from peers import PEERS

    assert all(set(shipped[c]) == set(PEERS) for c in CASE_NAMES if not c.startswith(("retina", "scenes sand",
                                                                                      "scenes wood")))


def test_a_peer_reads_the_painting_as_learn_does_and_one_class_pq():
    """A peer trains on known background as Learn reads it (strokes, the band around painted
    instances, or everything unpainted of a complete image) and refuses a painting without any."""
    pytest.importorskip("sklearn")
    from learn_quality import add_one_class, one_class_pq, summary
    from peers import build_peer

    image, instances = crowded_scene(1, size=128)
    peer = build_peer("filter forest", [True])
    peer.max_pixels, peer.trees = 5000, 20
    peer.fit([[Example(image, instances, complete=True)]])
    predicted = peer.predict(image, "watershed")[0]
    assert predicted.shape == instances.shape and predicted.max() > 5
    few = np.where(instances == 1, 1, 0)
    peer.fit([[Example(image, few)]])  # the band around the one instance is the background
    assert list(peer.forest.classes_) == [0, 1]  # it learned background (0) and the class (1)
    region = np.zeros((128, 128), np.int32)
    region[:40] = 1
    stuff = build_peer("filter forest", [False])
    with pytest.raises(ValueError, match="background"):
        stuff.fit([[Example(image, region)]])  # stuff, no strokes, not complete: nothing is background
    pq = one_class_pq(True)
    add_one_class(pq, instances, instances, True)
    assert summary(pq)["pq"] == 100.0
    pq = one_class_pq(True)
    add_one_class(pq, instances, np.zeros_like(instances), True)
    s = summary(pq)
    assert s["pq"] == 0.0 and s["fn"] == instances.max() and s["fp"] == 0
    pq = one_class_pq(True)  # a false positive on background counts
    fake = np.zeros_like(instances)
    fake[instances == 0] = 1
    add_one_class(pq, np.zeros_like(instances), fake, True)
    assert summary(pq)["fp"] == 1


def test_a_stuff_class_just_under_iou_half_shows_its_iou_beside_zero_pq():
    """A stuff segment under IoU 0.5 scores 0 PQ, like finding nothing: the table gives the class's pixel
    IoU beside it, so a near miss and a miss read differently."""
    from learn_cases import Case
    from learn_quality import cell, score

    truth = np.zeros((10, 10), np.int32)
    truth[:, :5] = 1  # 50 pixels
    near = np.zeros_like(truth)
    near[:, :3] = 1
    near[:3, 5:] = 1  # 30 of them found, and 15 more: IoU 30 / 65
    case = Case("stuff", [("vessel", False)], [[]], [(np.zeros((10, 10, 3), np.uint8), [truth])], [])
    (near_miss,) = score(case, lambda image: [near])
    (nothing,) = score(case, lambda image: [np.zeros_like(truth)])
    assert near_miss["pq"] == nothing["pq"] == 0.0
    assert abs(near_miss["iou"] - 100 * 30 / 65) < 1e-9 and nothing["iou"] == 0.0
    assert cell({"classes": [near_miss]}, 0, thing=False) == "  0.0 (IoU 46.2)"
    assert cell({"classes": [nothing]}, 0, thing=False) == "  0.0 (IoU  0.0)"
    assert cell({"classes": [near_miss]}, 0, thing=True).endswith("0/1/1")  # a thing: SQ and the counts


def test_seeds_retrain_the_model_learners_and_the_report_shows_their_spread(monkeypatch, tmp_path):
    """--seeds N trains a model learner N times (seeds from LearnConfig.seed on) and the report gives
    each class's PQ over them, a refused run counting 0, against the best peer: a learner that is good
    on its first seed only comes out below the peer."""
    import json

    import learn_quality
    from learn_cases import Case

    image, instances = crowded_scene(1, size=64)
    case = Case("tiny", [("grain", True)], [[Example(image, instances, complete=True)]], [(image, [instances])], [])
    monkeypatch.setattr(learn_quality, "build_cases", lambda split, names: [case])
    seeds = []

    def classes(pq):
        return [{"pq": pq, "sq": 80.0, "rq": pq / 0.8, "tp": 1, "fp": 0, "fn": 1}]

    def run(case, learner, base_path, before, config):
        seeds.append(config.seed)
        if config.seed == 8:
            return {"refused": "nothing is known as background"}
        return {"classes": classes({7: 60.0, 9: 30.0}[config.seed]), "seconds": 1.0, "kept": 100.0,
                "kept_worst": 100.0, "claimed": 0.0}

    monkeypatch.setattr(learn_quality, "run_model_learner", run)
    learn_quality.main(["--learners", "learn", "--seeds", "3", "--set", "seed=7", "--out", str(tmp_path)])
    assert seeds == [7, 8, 9]
    text = (tmp_path / "results.txt").read_text()
    assert " 60.0 (80.0) 1/0/1" in text  # the main table: the first seed's run
    assert "30.0 (0.0-60.0)" in text
    learn = json.loads((tmp_path / "results.json").read_text())["cases"]["tiny"]["results"]["learn"]
    assert learn["seeds"] == [7, 8, 9] and learn["by_seed"][1] is None

    peer = {"classes": classes(50.0), "seconds": 1.0, "postprocessing": "components"}
    rows = {"tiny": (case.classes, {"learn": learn, "filter forest": peer})}
    table = learn_quality.format_table(rows, ["learn", "filter forest"])
    first, spread = table.split("PQ over 3 seeds")
    assert "1.20x" in first and "0.60x" in spread  # 60 vs 50 on seed 7 alone, 30 vs 50 over the seeds


def test_set_reads_optional_fields_and_none():
    from learn_quality import _with_settings

    from model.interactive.config import LearnConfig

    config = _with_settings(LearnConfig(), ["dense_stuff_share=none", "iterations=150", "dense_inputs=res2,mask"])
    assert config.dense_stuff_share is None and config.iterations == 150
    assert config.dense_inputs == ("res2", "mask")
    assert _with_settings(config, ["dense_stuff_share=0.5"]).dense_stuff_share == 0.5
    with pytest.raises(SystemExit, match="no field 'nothing'"):
        _with_settings(config, ["nothing=1"])
    with pytest.raises(SystemExit, match="iterations cannot be None"):
        _with_settings(config, ["iterations=none"])

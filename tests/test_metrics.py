import numpy as np
import pytest

from napari_metalseg.errors import MetalsegError
from napari_metalseg.metrics import (
    Evaluation,
    band_labels,
    boundary_distance,
    confusion_matrix,
    dice_per_phase,
    errors_by_boundary_distance,
    format_seed_table,
    iou_per_phase,
    mean_dice,
)
from napari_metalseg.phases import UNLABELED


def test_hand_computed_dice_iou():
    # target: 4 px of phase 0, 4 px of phase 1, 2 unlabeled px
    target = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 255, 255]], dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1, 1, 1, 0, 0, 2, 2]], dtype=np.uint8)
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[3, 1, 0], [2, 2, 0], [0, 0, 0]]
    # phase 0: TP 3, FP 2, FN 1 -> 6/9; phase 1: TP 2, FP 1, FN 2 -> 4/7; phase 2 absent everywhere (unlabeled ignored)
    dice = dice_per_phase(cm)
    assert dice[0] == pytest.approx(6 / 9)
    assert dice[1] == pytest.approx(4 / 7)
    assert np.isnan(dice[2])
    assert mean_dice(cm) == pytest.approx((6 / 9 + 4 / 7) / 2 * 100)
    iou = iou_per_phase(cm)
    assert iou[0] == pytest.approx(3 / 6)
    assert iou[1] == pytest.approx(2 / 5)


def test_phase_predicted_but_absent_counts_as_zero():
    target = np.array([[0, 0, 0, 0]], dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1]], dtype=np.uint8)
    dice = dice_per_phase(confusion_matrix(pred, target, 2))
    assert dice[0] == pytest.approx(6 / 7)
    assert dice[1] == 0.0


def test_perfect_and_all_unlabeled():
    t = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    assert mean_dice(confusion_matrix(t, t, 2)) == pytest.approx(100.0)
    u = np.full((2, 2), 255, np.uint8)
    assert np.isnan(mean_dice(confusion_matrix(t, u, 2)))


def test_bad_values():
    with pytest.raises(MetalsegError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(MetalsegError, match="outside"):
        confusion_matrix(np.array([[5]]), np.array([[0]]), 2)
    with pytest.raises(MetalsegError, match="outside"):
        confusion_matrix(np.array([[0]]), np.array([[7]]), 2)


def test_grouping_by_magnification_and_average():
    ev = Evaluation(["a", "b"])
    t = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    ev.add("img1", t, t, 3000)  # 100
    ev.add("img2", np.array([[0, 1, 1, 1]], np.uint8), t, 3000)  # (2/3 + 4/5)/2 = 73.33
    ev.add("img3", np.array([[1, 1, 1, 1]], np.uint8), t, 2700)  # a: 0, b: 4/6 -> 33.33
    groups = ev.by_magnification()
    assert list(groups) == ["x2700", "x3000"]
    assert groups["x2700"] == pytest.approx(100 / 3)
    assert groups["x3000"] == pytest.approx((100 + (2 / 3 + 4 / 5) / 2 * 100) / 2)
    assert ev.average == pytest.approx((groups["x2700"] + groups["x3000"]) / 2)
    d = ev.to_dict()
    assert d["confusion_matrix"] == [[3, 3], [0, 6]]
    assert d["images"][2]["dice"]["a"] == 0.0


def test_seed_table_matches_the_study_row():
    table = format_seed_table(
        {
            "LoRA-SAM(512)": {"x2700": 86.56, "x3000": 82.16, "x5000": 88.87},
            "SAM": {"x2700": 13.33, "x3000": 12.38, "x5000": 15.14},
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["Model", "x2700", "x3000", "x5000", "Avg."]
    assert lines[1].split() == ["LoRA-SAM(512)", "86.56", "82.16", "88.87", "85.86"]
    assert lines[2].split()[-1] == "13.62"  # the study's SAM (0 shot) average


def test_docstring_examples():
    import doctest

    import napari_metalseg.metrics as metrics

    result = doctest.testmod(metrics)
    assert result.attempted >= 2 and result.failed == 0


def test_wrong_pixels_are_placed_by_their_distance_to_the_reference_boundary():
    """Hand-counted: a boundary one column off (near it) and a wrong 3 x 3 corner (7-9 px from it)."""
    target = np.zeros((20, 20), np.uint8)
    target[:, 10:] = 1
    pred = target.copy()
    pred[:, 10] = 0  # the boundary one pixel off: 20 wrong pixels at distance 0
    pred[0:3, 0:3] = 1  # a wrong region 7-9 px from the boundary
    d = boundary_distance(target)
    assert d[0, 9] == d[0, 10] == 0 and d[0, 0] == 9 and d[0, 19] == 9
    wrong, labelled = errors_by_boundary_distance(pred, target)
    assert wrong.tolist() == [20, 0, 9, 0]
    assert labelled.tolist() == [80, 120, 200, 0]  # columns 8-11, 5-7 and 12-14, the rest
    plain = Evaluation(["a", "b"])  # not asked for: nothing computed, nothing reported
    plain.add("x", pred, target)
    assert plain.images[0].wrong is None and "errors_by_boundary" not in plain.to_dict()
    assert np.isnan(plain.errors_by_boundary()["0-2 px"]["share"])
    evaluation = Evaluation(["a", "b"], boundaries=True)
    evaluation.add("x", pred, target)
    bands = evaluation.errors_by_boundary()
    assert list(bands) == band_labels() == ["0-2 px", "2-5 px", "5-10 px", "over 10 px"]
    assert bands["0-2 px"]["share"] == pytest.approx(100 * 20 / 29)
    assert bands["0-2 px"]["error_rate"] == pytest.approx(25.0)
    assert bands["5-10 px"]["error_rate"] == pytest.approx(4.5)
    assert np.isnan(bands["over 10 px"]["error_rate"])
    line = evaluation.format_errors_by_boundary()
    assert "0-2 px 69.0 %" in line and "over 10 px: no labelled pixels" in line
    assert evaluation.to_dict()["errors_by_boundary"]["0-2 px"] == bands["0-2 px"]
    evaluation.add("perfect", target, target)  # no wrong pixel: every share undefined, every rate 0
    per_image = [image["errors_by_boundary"] for image in evaluation.to_dict()["images"]]
    assert per_image[0]["0-2 px"] == bands["0-2 px"]
    assert np.isnan(per_image[1]["0-2 px"]["share"]) and per_image[1]["0-2 px"]["error_rate"] == 0
    assert evaluation.errors_by_boundary()["0-2 px"]["error_rate"] == pytest.approx(100 * 20 / 160)


def test_unlabeled_pixels_make_no_boundary_and_are_not_counted():
    target = np.full((10, 10), UNLABELED, np.uint8)
    target[:, :3] = 0
    target[:, 7:] = 1  # two phases that never touch: no boundary
    assert np.isinf(boundary_distance(target)).all()
    pred = np.zeros_like(target)  # every pixel of phase 1 wrong, unlabeled pixels ignored
    wrong, labelled = errors_by_boundary_distance(pred, target)
    assert wrong.tolist() == [0, 0, 0, 30] and labelled.tolist() == [0, 0, 0, 60]
    target[:, 3] = 1  # now they touch between columns 2 and 3
    assert boundary_distance(target)[0, 2] == 0 and boundary_distance(target)[0, 0] == 2

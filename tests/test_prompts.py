"""Box prompts without a GUI: the box checks and the rule that finds the boxed object."""

import numpy as np
import pytest

from napari_metalseg.errors import MetalsegError
from napari_metalseg.prompts import check_box, object_in_box


@pytest.mark.parametrize(
    "box, fragment",
    [
        ((0, 0, 300, 10), "outside the image"),
        ((-1, 0, 10, 10), "outside the image"),
        ((10, 10, 5, 20), "x0 < x1"),
        ((1, 2, 3), "four numbers"),
    ],
)
def test_bad_boxes(box, fragment):
    with pytest.raises(MetalsegError, match=fragment):
        check_box(box, (100, 200))


def test_object_rule_keeps_the_centre_object_with_holes_filled():
    region = np.zeros((20, 20), np.uint8)  # matrix phase 0 on the outline
    region[6:14, 6:14] = 1  # the boxed object, predicted as phase 1 ...
    region[9:11, 9:11] = 0  # ... with a hole
    region[1:4, 1:4] = 2  # a separate small particle
    obj = object_in_box(region)
    expected = np.zeros((20, 20), bool)
    expected[6:14, 6:14] = True
    assert np.array_equal(obj, expected)
    off_centre = np.zeros((20, 20), np.uint8)
    off_centre[1:5, 1:5] = 1
    off_centre[13:19, 13:19] = 2  # larger: taken when nothing covers the centre
    assert object_in_box(off_centre).sum() == 36
    assert object_in_box(np.ones((5, 5), np.uint8)).all()


def test_box_edges_round_outwards_and_empty_regions_are_refused():
    assert check_box((0.5, 1.2, 10.1, 20), (100, 200)) == (0, 1, 11, 20)
    with pytest.raises(MetalsegError, match="NaN"):
        check_box((0, 0, float("nan"), 5), (100, 200))
    with pytest.raises(MetalsegError, match="non-empty 2-D"):
        object_in_box(np.zeros((0, 3), np.uint8))

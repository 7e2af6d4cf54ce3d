import json

import numpy as np
import pytest

from napari_metalseg.errors import MetalsegError
from napari_metalseg.phases import UNLABELED, PhaseSet, labels_to_mask, mask_to_labels


def test_mask_label_round_trip():
    mask = np.array([[0, 1, 2], [255, 0, 255]], dtype=np.uint8)
    labels = mask_to_labels(mask)
    assert labels.tolist() == [[1, 2, 3], [0, 1, 0]]
    assert np.array_equal(labels_to_mask(labels, 3), mask)


def test_labels_outside_phase_set_become_unlabeled():
    labels = np.array([[0, 1, 4, 9]])
    assert labels_to_mask(labels, num_phases=3).tolist() == [[UNLABELED, 0, UNLABELED, UNLABELED]]
    with pytest.raises(MetalsegError):
        labels_to_mask(np.array([[-1, 1]]))


def test_phases_json_round_trip(tmp_path):
    phases = PhaseSet.from_names(["ferrite", "martensite"], ["#112233", "#AABBCC"])
    phases.save(tmp_path / "phases.json")
    loaded = PhaseSet.load(tmp_path / "phases.json")
    assert loaded == PhaseSet.from_names(["ferrite", "martensite"], ["#112233", "#aabbcc"])
    assert json.loads((tmp_path / "phases.json").read_text())[1] == {"name": "martensite", "color": "#aabbcc"}
    assert loaded.napari_colormap()[2] == "#aabbcc"
    assert loaded.napari_colormap()[0] == "transparent"
    assert np.allclose(loaded.rgb()[0], [0x11 / 255, 0x22 / 255, 0x33 / 255])


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("not json", "not a readable JSON"),
        ("[]", "non-empty list"),
        ('[{"name": "a", "color": "red"}]', "colour 'red'"),
        ('[{"name": "a"}, {"name": "a"}]', "duplicate phase names: a"),
        ('[{"color": "#000000"}]', "entry 0 needs a non-empty 'name'"),
    ],
)
def test_bad_phases_json(tmp_path, content, fragment):
    path = tmp_path / "phases.json"
    path.write_text(content)
    with pytest.raises(MetalsegError, match=fragment):
        PhaseSet.load(path)


def test_missing_phases_json(tmp_path):
    with pytest.raises(MetalsegError, match="phases.json is missing"):
        PhaseSet.load(tmp_path / "phases.json")


def test_phase_fractions_count_only_phase_pixels():
    from napari_metalseg.phases import UNLABELED, phase_fractions, phase_pixel_counts

    mask = np.array([[0, 0, 1, UNLABELED], [2, 7, UNLABELED, 1]], dtype=np.uint8)
    assert phase_pixel_counts(mask, 3).tolist() == [2, 2, 1]  # 7 is not a phase of a 3-phase set, 255 unlabeled
    np.testing.assert_allclose(phase_fractions(mask, 3), [0.4, 0.4, 0.2])
    assert phase_fractions(np.full((3, 3), UNLABELED, np.uint8), 3) is None


def test_progress_jobs_return_their_result_and_refuse_unknown_kinds():
    from napari_metalseg.progress import ProgressEvent, run_job

    def job():
        for i in range(3):
            yield ProgressEvent("predict", i + 1, 3)
        return "result"

    seen = []
    assert run_job(job(), seen.append) == "result"
    assert [e.step for e in seen] == [1, 2, 3] and seen[-1].fraction == 1.0
    with pytest.raises(ValueError, match="progress kind 'bogus'"):
        ProgressEvent("bogus")

"""torch_threads: the one owner of torch's CPU thread count."""

import threading

import pytest
import torch

from napari_metalseg.errors import MetalsegError
from napari_metalseg.threads import torch_threads


def test_limits_nests_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1) as count:
        assert count == 1 == torch.get_num_threads()
        with torch_threads(before + 4) as inner:  # a higher limit changes nothing
            assert inner == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(before + 4) as count:
        assert count == before == torch.get_num_threads()


def test_restores_after_an_error_and_in_a_worker_thread():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    seen = []

    def work():
        start = torch.get_num_threads()
        with torch_threads(1):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads() == start)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen == [1, True] and torch.get_num_threads() == before


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "2"])
def test_refuses_a_bad_limit_by_name_and_value(limit):
    before = torch.get_num_threads()
    with pytest.raises(MetalsegError, match=r"threads .*: must be an integer at least 1"), torch_threads(limit):
        pass
    assert torch.get_num_threads() == before


def test_threads_module_is_the_only_code_that_sets_torchs_thread_count():
    from pathlib import Path

    import napari_metalseg

    root = Path(napari_metalseg.__file__).parent
    setters = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "set_num_threads(" in path.read_text(encoding="utf-8")
    ]
    assert setters == ["threads.py"]

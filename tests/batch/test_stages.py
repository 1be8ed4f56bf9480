"""Grouping: items of one shape fill a group up to the largest power of two of them its row
limit holds, other shapes group apart, a group that waited goes as a power of two of its items,
and the input's end drains the rest in powers of two."""

from __future__ import annotations

import time
from pathlib import Path

from foleyrt.batch import BatchItem, BatchReport, BatchSettings, plan_batch
from foleyrt.batch.stages import Grouper, Work
from foleyrt.lengths import SequenceLengths
from foleyrt.pipeline.pipeline import Encoded
from foleyrt.request import GenerationRequest
from tests.tiny import tiny_conditions

REQUEST = GenerationRequest(steps=2, seed=1)  # guided: 2 rows per item


def _works(tmp_path: Path, seconds: list[float]) -> list[Work]:
    items = [BatchItem(Path(f"clip{k}.mp4")) for k in range(len(seconds))]
    report = BatchReport.start(plan_batch(items, tmp_path, BatchSettings(request=REQUEST)),
                               overwrite=False)
    works = []
    for result, s in zip(report.items, seconds, strict=True):
        lengths = SequenceLengths.of_duration(s)
        encoded = Encoded(None, REQUEST, tiny_conditions(0, lengths.clip_frames,
                                                         lengths.sync_tokens), lengths, s)
        works.append(Work(result, REQUEST, False, 0.0, encoded))
    return works


def _indices(closed: tuple[list[Work], int] | None) -> list[int] | None:
    return None if closed is None else [w.result.job.index for w in closed[0]]


def test_groups_fill_to_their_rows_per_shape(tmp_path: Path) -> None:
    works = _works(tmp_path, [5, 8, 5, 5, 8, 8])
    grouper = Grouper(lambda work: 6)  # three guided items fit: groups of two
    assert [_indices(grouper.add(w)) for w in works[:2]] == [None, None]
    assert _indices(grouper.add(works[2])) == [0, 2]
    assert _indices(grouper.add(works[3])) is None
    assert _indices(grouper.add(works[4])) == [1, 4]
    assert _indices(grouper.add(works[5])) is None
    assert sorted(_indices(g) for g in grouper.drain()) == [[3], [5]]


def test_an_item_wider_than_the_limit_goes_alone(tmp_path: Path) -> None:
    (work,) = _works(tmp_path, [5])
    assert _indices(Grouper(lambda work: 1).add(work)) == [0]


def test_the_end_drains_in_powers_of_two(tmp_path: Path) -> None:
    works = _works(tmp_path, [5] * 7)
    grouper = Grouper(lambda work: 32)
    for w in works:
        assert grouper.add(w) is None
    assert [_indices(g) for g in grouper.drain()] == [[0, 1, 2, 3], [4, 5], [6]]


def test_a_group_that_waited_goes_as_a_power_of_two(tmp_path: Path) -> None:
    works = _works(tmp_path, [5] * 7)
    grouper = Grouper(lambda work: 32)
    for w in works:
        assert grouper.add(w) is None
    assert grouper.ripe(wait_s=60) is None
    assert _indices(grouper.ripe(wait_s=0)) == [0, 1, 2, 3]
    assert grouper.ripe(wait_s=1) is None  # the rest waits afresh
    time.sleep(0.01)
    assert _indices(grouper.ripe(wait_s=0.005)) == [4, 5]
    assert [_indices(g) for g in grouper.drain()] == [[6]]

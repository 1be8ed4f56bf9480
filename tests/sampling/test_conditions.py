"""Classifier-free guidance rows: the release's order and contents, and several clips' rows
stacked into one forward."""

from __future__ import annotations

import pytest
import torch

from foleyrt.sampling.conditions import ConditionRows, cfg_rows
from tests.tiny import tiny_conditions


def test_guided_rows_are_unconditional_first(tiny_dit) -> None:
    cond = tiny_conditions(0)
    rows = cfg_rows(tiny_dit, cond, 3, True, 40)
    assert rows.rows == 6 and rows.guided and rows.audio_len == 40
    uncond, condl = rows.clip.chunk(2)
    assert torch.equal(uncond, tiny_dit.empty_clip(3, cond.clip_feat.shape[1]))
    assert torch.equal(condl, cond.clip_feat.expand(3, -1, -1))
    assert torch.equal(rows.sync[:3], tiny_dit.empty_sync(3, cond.sync_feat.shape[1]))
    assert torch.equal(rows.text[:3], cond.uncond_text_feat.expand(3, -1, -1))
    assert torch.equal(rows.text[3:], cond.text_feat.expand(3, -1, -1))


def test_unguided_rows_are_the_conditional_ones(tiny_dit) -> None:
    cond = tiny_conditions(0)
    rows = cfg_rows(tiny_dit, cond, 2, False, 40)
    assert rows.rows == 2 and not rows.guided
    assert torch.equal(rows.text, cond.text_feat.expand(2, -1, -1))


def test_stacked_clips_keep_the_halves_layout(tiny_dit) -> None:
    a = cfg_rows(tiny_dit, tiny_conditions(1), 1, True, 40)
    b = cfg_rows(tiny_dit, tiny_conditions(2), 2, True, 40)
    both = ConditionRows.cat([a, b])
    assert both.rows == 6 and both.guided
    assert torch.equal(both.text, torch.cat([a.text[:1], b.text[:2], a.text[1:], b.text[2:]]))


def test_guided_rows_split_into_their_halves(tiny_dit) -> None:
    """What the two ranks of CFG-parallel prepare: each half a plain forward's rows."""
    rows = ConditionRows.cat([cfg_rows(tiny_dit, tiny_conditions(k), 2, True, 40) for k in (1, 2)])
    uncond, cond = rows.halves()
    assert not uncond.guided and not cond.guided and uncond.rows == cond.rows == 4
    for name in ("clip", "text", "sync"):
        assert torch.equal(torch.cat([getattr(uncond, name), getattr(cond, name)]),
                           getattr(rows, name))
    with pytest.raises(ValueError, match="only guided rows"):
        cond.halves()

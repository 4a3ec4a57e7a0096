"""dualanodiff_core.model.pairing: the pair layout ``[g0, a0, g1, a1, ...]`` (reference-method.md section 1),
row by row against explicit expectations (these helpers feed the ComfyUI sampling glue)."""
import pytest
import torch

from dualanodiff_core import DualAnoDiffError
from dualanodiff_core.model.pairing import deinterleave, duplicate_rows, interleave, repeat_tokens_to, stack_token_rows


def _rows(n, tag, shape=(2, 3)):
    """n rows whose values say which row of which batch they are: tag * 100 + row index."""
    return torch.stack([torch.full(shape, float(tag * 100 + i)) for i in range(n)])


def test_interleave_puts_each_global_row_before_its_anomaly_row():
    g, a = _rows(3, 1), _rows(3, 2)
    pairs = interleave(g, a)
    assert pairs.shape == (6, 2, 3)
    assert [int(r[0, 0]) for r in pairs] == [100, 200, 101, 201, 102, 202]


def test_deinterleave_undoes_interleave_and_refuses_odd_batches():
    g, a = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2)
    back_g, back_a = deinterleave(interleave(g, a))
    assert torch.equal(back_g, g) and torch.equal(back_a, a)
    rows = _rows(4, 3)
    eg, ea = deinterleave(rows)
    assert [int(r[0, 0]) for r in eg] == [300, 302] and [int(r[0, 0]) for r in ea] == [301, 303]
    with pytest.raises(DualAnoDiffError, match="even number of rows, got 3"):
        deinterleave(_rows(3, 1))


def test_interleave_refuses_batches_that_do_not_pair_up():
    with pytest.raises(DualAnoDiffError, match=r"same shape.*\(2, 2, 3\) and \(3, 2, 3\)"):
        interleave(_rows(2, 1), _rows(3, 2))


def test_duplicate_rows_gives_each_pair_two_copies_of_its_row():
    x = _rows(3, 5)
    d = duplicate_rows(x)
    assert [int(r[0, 0]) for r in d] == [500, 500, 501, 501, 502, 502]
    assert torch.equal(deinterleave(d)[0], x) and torch.equal(deinterleave(d)[1], x)


def test_repeat_tokens_to_tiles_whole_sequences():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    assert repeat_tokens_to(x, 3) is x
    y = repeat_tokens_to(x, 9)
    assert y.shape == (2, 9, 4)
    for k in range(3):
        assert torch.equal(y[:, 3 * k:3 * k + 3], x)
    with pytest.raises(DualAnoDiffError, match="cannot repeat 3 tokens to 8"):
        repeat_tokens_to(x, 8)


def test_repeated_tokens_leave_attention_unchanged():
    """Why token sequences may be tiled: attention over k copies of every key/value is the same."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 8, generator=gen) for _ in range(3))
    att = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(att(q, repeat_tokens_to(k, 15), repeat_tokens_to(v, 15)), att(q, k, v))


def test_stack_token_rows_takes_the_lcm_length_global_first():
    gen = torch.Generator().manual_seed(1)
    first, second = torch.randn(1, 77, 8, generator=gen), torch.randn(1, 154, 8, generator=gen)
    both = stack_token_rows(first, second)
    assert both.shape == (2, 154, 8)
    assert torch.equal(both[0, :77], first[0]) and torch.equal(both[0, 77:], first[0])
    assert torch.equal(both[1], second[0])
    odd = stack_token_rows(torch.randn(1, 2, 8, generator=gen), torch.randn(1, 3, 8, generator=gen))
    assert odd.shape == (2, 6, 8)
    with pytest.raises(DualAnoDiffError, match=r"different text encoders \(widths 8 and 16\)"):
        stack_token_rows(first, torch.randn(1, 77, 16))

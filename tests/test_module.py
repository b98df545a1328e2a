"""Tests of the HANet module (hanet_fast.nn, DESIGN §3) and its positional encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hanet_fast.ops
from hanet_fast.nn import PAD_ROW_POS, HANet, PositionalEncoding1d, coarse_positions, default_max_jitter, sinusoid_table

BACKENDS = [b for b, why in hanet_fast.ops.available_backends().items() if why is None and b in ("reference", "cpu")]

# (H_low, H_high, rows): H_low != H_high, rows larger than H, rows smaller than H, H % rows != 0.
SHAPES = [(13, 26, 16), (20, 9, 8)]

pytestmark = pytest.mark.usefixtures("one_thread", "quiet_fallback_warning")


# ----------------------------------------------------------------------------- helpers
def official_table(n_position: int, d_hid: int) -> np.ndarray:
    """The official get_sinusoid_encoding_table (network/PosEmbedding.py) + 1, written out in numpy:
    the float64 table rounded to float32 (its torch.FloatTensor), then 1 added in float32."""
    cycle = 10 if d_hid > 50 else 100
    table = np.array(
        [[pos / np.power(cycle, 2 * (j // 2) / d_hid) for j in range(d_hid)] for pos in range(n_position)]
    )
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table.astype(np.float32) + np.float32(1)


def make_module(*, seed: int = 0, dtype=torch.float64, in_channels=40, out_channels=6, rows=16, **kwargs) -> HANet:
    """A HANet with random BN statistics and learned table, so every part of it matters."""
    torch.manual_seed(seed)
    m = HANet(in_channels, out_channels, rows=rows, reduction=8, **kwargs)
    with torch.no_grad():
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm1d)):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        if m.pos_encoding is not None and m.pos_encoding.kind == "learned":
            m.pos_encoding.weight.normal_()
    return m.to(dtype)


def make_inputs(h_low: int, h_high: int, *, batch=2, in_channels=40, out_channels=6, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_low = torch.randn(batch, in_channels, h_low, 7, generator=g, dtype=dtype)
    x_high = torch.randn(batch, out_channels, h_high, 5, generator=g, dtype=dtype)
    return x_low, x_high


def crop_row_pos(batch: int, h: int, top: float = 0.5, height: float = 0.45) -> torch.Tensor:
    """Rows of a crop spanning [top, top + height) of the full image height."""
    return (top + torch.arange(h, dtype=torch.float64) * height / h).expand(batch, h).contiguous()


def oracle(m: HANet, x_low, x_high, row_pos=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The HANet pipeline written out with stock PyTorch ops, using m's parameters (no dropout, no jitter)."""
    R = m.rows
    pool = F.adaptive_avg_pool2d if m.pooling == "avg" else F.adaptive_max_pool2d
    z = pool(x_low, (R, 1)).squeeze(-1)

    def add_pos(t):
        if m.pos_encoding is None:
            return t
        B, h_low = t.shape[0], x_low.shape[2]
        # None: x_low spans a full image, the positions arange(H_low) / H_low
        rp = (torch.arange(h_low, dtype=torch.float64) / h_low).expand(B, h_low) if row_pos is None else row_pos
        # the official order: quantise every image row, pad rows -> R, one nearest resize to R entries
        p = torch.where(rp == 1.0, R, torch.floor(rp * R + 1e-3).clamp(0, R - 1))
        pos = F.interpolate(p.float()[:, None], size=R, mode="nearest").long()[:, 0]
        return t + m.pos_encoding.weight[pos].transpose(1, 2).to(t.dtype)

    def conv_bn_relu(seq, t):
        conv, bn = seq[0], seq[1]
        t = F.conv1d(t, conv.weight, conv.bias, padding=conv.padding)
        t = F.batch_norm(t, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, m.training, 0.1, bn.eps)
        return F.relu(t)

    if m.pos_injection == 1:
        z = add_pos(z)
    q = conv_bn_relu(m.conv1, z)
    if m.pos_injection == 2:
        q = add_pos(q)
    if m.num_convs == 3:
        q = conv_bn_relu(m.conv2, q)
        last = m.conv3[0]
    else:
        last = m.conv2[0]
    attn = torch.sigmoid(F.conv1d(q, last.weight, last.bias, padding=last.padding))
    up = F.interpolate(attn, size=x_high.shape[2], mode="linear", align_corners=False)
    return x_high * up[..., None], attn


def run_with_grads(fn, m, x_low, x_high, row_pos=None):
    """Output, attention and gradients (x_low, x_high, then every parameter) of a fixed random loss."""
    x_low = x_low.detach().clone().requires_grad_(True)
    x_high = x_high.detach().clone().requires_grad_(True)
    m.zero_grad(set_to_none=True)
    out, attn = fn(m, x_low, x_high, row_pos)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    ((out * weights).sum() + attn.sum()).backward()
    grads = [x_low.grad, x_high.grad] + [p.grad for p in m.parameters()]
    return out.detach(), attn.detach(), grads


def module_call(m, x_low, x_high, row_pos):
    return m(x_low, x_high, row_pos, return_attention=True)


def assert_all_close(a, b, **tol):
    for i, (u, v) in enumerate(zip(a, b)):
        assert (u is None) == (v is None), f"gradient {i}: one is None"
        if u is not None:
            torch.testing.assert_close(u, v, msg=lambda s, i=i: f"tensor {i}: {s}", **tol)


# ----------------------------------------------------------------------------- shapes and formats
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_output_shape_dtype_format(backend, channels_last):
    m = HANet(32, 12, rows=16, backend=backend).eval()
    x_low = torch.randn(2, 32, 13, 9)
    x_high = torch.randn(2, 12, 26, 11)
    if channels_last:
        x_high = x_high.contiguous(memory_format=torch.channels_last)
    out = m(x_low, x_high)
    assert out.shape == x_high.shape and out.dtype == x_high.dtype
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)
    out2, attn = m(x_low, x_high, return_attention=True)
    assert attn.shape == (2, 12, 16) and attn.dtype == torch.float32
    assert bool(((attn > 0) & (attn < 1)).all())
    torch.testing.assert_close(out2, out, rtol=0, atol=0)
    torch.testing.assert_close(out, x_high * F.interpolate(attn, size=26, mode="linear")[..., None])


def test_architecture_and_state_dict():
    m = HANet(64, 10, rows=16, reduction=32, kernel_size=5, num_convs=3)
    assert m.conv1[0].weight.shape == (2, 64, 1) and m.conv1[0].bias is None
    assert m.conv2[0].weight.shape == (4, 2, 3) and m.conv2[0].bias is not None
    assert m.conv3[0].weight.shape == (10, 4, 5) and m.conv3[0].padding == (2,)
    assert isinstance(m.dropout, torch.nn.Dropout1d) and m.dropout.p == 0.1
    assert m.pos_encoding.weight.shape == (17, 2) and not m.pos_encoding.weight.requires_grad
    assert "pos_encoding.weight" in m.state_dict() and "pos_encoding.weight" in dict(m.named_buffers())
    m2 = HANet(65, 10, num_convs=2, dropout=0.0, pos_encoding="learned", pos_injection=1)
    assert m2.conv1[0].weight.shape == (3, 65, 1)  # ceil(65 / 32)
    assert m2.conv2[0].weight.shape == (10, 3, 3) and m2.conv3 is None and m2.dropout is None
    assert "pos_encoding.weight" in dict(m2.named_parameters()) and m2.pos_encoding.weight.shape == (17, 65)
    assert bool((m2.pos_encoding.weight == 0).all())  # official zero init
    assert HANet(8, 4, pos_encoding=None).pos_encoding is None


# ----------------------------------------------------------------------------- against the written-out pipeline
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("num_convs", [2, 3])
@pytest.mark.parametrize(
    "pos_encoding,pos_injection,use_row_pos",
    [("sinusoidal", 2, False), ("sinusoidal", 1, True), ("learned", 2, True), ("learned", 1, False), (None, 2, True)],
)
@pytest.mark.parametrize("train", [False, True])
def test_matches_written_out_pipeline(backend, shape, pooling, num_convs, pos_encoding, pos_injection, use_row_pos, train):
    """Outputs and all gradients equal the stock-PyTorch pipeline (dropout and jitter off; train mode = batch BN)."""
    h_low, h_high, rows = shape
    m = make_module(
        rows=rows, pooling=pooling, num_convs=num_convs, pos_encoding=pos_encoding, pos_injection=pos_injection,
        dropout=0.0, pos_noise=0.0, backend=backend,
    ).train(train)
    x_low, x_high = make_inputs(h_low, h_high)
    row_pos = crop_row_pos(2, h_low) if use_row_pos else None
    got = run_with_grads(module_call, m, x_low, x_high, row_pos)
    want = run_with_grads(oracle, m, x_low, x_high, row_pos)
    assert_all_close(got[:2], want[:2])
    assert_all_close(got[2], want[2])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.parametrize("num_convs", [2, 3])
@pytest.mark.parametrize("pos_encoding,pos_injection", [("sinusoidal", 2), ("sinusoidal", 1), ("learned", 2), (None, 1)])
@pytest.mark.parametrize("train", [False, True])
def test_backends_agree(shape, pooling, num_convs, pos_encoding, pos_injection, train):
    """Every available backend gives the reference backend's outputs and gradients, dropout and jitter
    included (same seed). With only the reference backend this checks that a seed reproduces a run."""
    h_low, h_high, rows = shape
    x_low, x_high = make_inputs(h_low, h_high, dtype=torch.float32)
    row_pos = crop_row_pos(2, h_low, top=0.3).float()
    results = {}
    for backend in ["reference"] + BACKENDS:
        m = make_module(
            rows=rows, pooling=pooling, num_convs=num_convs, pos_encoding=pos_encoding, pos_injection=pos_injection,
            dropout=0.3, pos_noise=1.0, backend=backend, dtype=torch.float32,
        ).train(train)
        torch.manual_seed(1234)
        results.setdefault(backend, []).append(run_with_grads(module_call, m, x_low, x_high, row_pos))
    ref = results.pop("reference")
    assert_all_close(ref[0][:2], ref[1][:2], rtol=0, atol=0)
    assert_all_close(ref[0][2], ref[1][2], rtol=0, atol=0)
    for backend, (res,) in results.items():
        assert_all_close(res[:2], ref[0][:2], rtol=1e-5, atol=1e-6)
        assert_all_close(res[2], ref[0][2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_backends_agree_channels_last_and_sum_loss(pooling):
    """channels_last inputs and the stride-0 gradient of out.sum(): same results, gradients keep the format."""
    results = {}
    for backend in BACKENDS:
        m = make_module(pooling=pooling, backend=backend, dtype=torch.float32).train()
        x_low, x_high = (t.contiguous(memory_format=torch.channels_last) for t in make_inputs(13, 26, dtype=torch.float32))
        x_low.requires_grad_(True)
        x_high.requires_grad_(True)
        torch.manual_seed(7)
        out = m(x_low, x_high, crop_row_pos(2, 13).float())
        out.sum().backward()
        assert out.is_contiguous(memory_format=torch.channels_last)
        for g in (x_low.grad, x_high.grad):
            assert g.is_contiguous(memory_format=torch.channels_last)
        results[backend] = [out.detach(), x_low.grad, x_high.grad] + [p.grad for p in m.parameters()]
    for backend, res in results.items():
        assert_all_close(res, results["reference"], rtol=1e-4, atol=1e-5)


def test_dropout_is_channelwise_and_train_only():
    m = make_module(dropout=0.5, pos_noise=0.0, dtype=torch.float32)
    x_low, x_high = make_inputs(13, 13, dtype=torch.float32)
    m.eval()
    a = m(x_low, x_high)
    torch.testing.assert_close(m(x_low, x_high), a, rtol=0, atol=0)
    m.train()
    z = torch.randn(4, 40, 16)
    dropped = m.dropout(z)
    zeroed = (dropped == 0).all(dim=2)  # whole channels are dropped
    assert bool(((dropped == 0) == zeroed[..., None]).all()) and 0 < int(zeroed.sum()) < zeroed.numel()


# ----------------------------------------------------------------------------- positional encoding
@pytest.mark.parametrize("n,dim", [(17, 2), (17, 8), (17, 50), (17, 51), (33, 80), (9, 7), (17, 1280)])
def test_sinusoid_table_matches_official_formula(n, dim):
    table = sinusoid_table(n, dim)
    assert table.dtype == torch.float32 and table.shape == (n, dim)
    np.testing.assert_allclose(table.numpy(), official_table(n, dim), rtol=0, atol=1e-6)
    m = PositionalEncoding1d(n - 1, dim)
    torch.testing.assert_close(m.weight, table, rtol=0, atol=0)


def test_sinusoid_table_rounds_twice_as_the_official_does():
    """Bit for bit the official rounding (float64 -> float32, then + 1 in float32) for many sizes;
    adding 1 in float64 and rounding once differs by an ulp somewhere in these."""
    for n in (2, 5, 9, 17, 33, 65, 129):
        for dim in [*range(1, 70), 80, 96, 128, 160, 256, 304, 320, 512, 1280, 2048]:
            assert np.array_equal(sinusoid_table(n, dim).numpy(), official_table(n, dim)), (n, dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_positions_without_row_pos_and_full_image_row_pos_agree(dtype):
    # the official nearest resize maps coarse row j to input row floor(j * H / rows): H a multiple of rows
    for h, rows in [(32, 16), (16, 16), (48, 16), (66, 22), (36, 12), (8, 4), (128, 16), (1000, 125)]:
        full = (torch.arange(h, dtype=dtype) / h).expand(3, h)
        pos = coarse_positions(full, rows, 3)
        assert torch.equal(pos, torch.arange(rows).expand(3, rows)), (h, rows)
        assert torch.equal(coarse_positions(None, rows, 3), pos)
    for rows, k in [(16, 4), (16, 6)]:
        m = make_module(rows=rows, pos_encoding="sinusoidal", pos_injection=2, dtype=dtype).eval()
        x_low, x_high = make_inputs(rows * k, 11, dtype=dtype)
        full = (torch.arange(rows * k, dtype=dtype) / (rows * k)).expand(2, rows * k)
        torch.testing.assert_close(m(x_low, x_high, full), m(x_low, x_high), rtol=0, atol=0)
        # a crop elsewhere gives other positions, hence another attention
        assert not torch.equal(m(x_low, x_high, crop_row_pos(2, rows * k).to(dtype)), m(x_low, x_high))


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_without_row_pos_is_the_full_image_of_x_lows_height(backend):
    """None means exactly arange(H_low) / H_low, also when H_low is not a multiple of rows (then
    coarse row j sits at row floor(j * H_low / rows), whose position is not always j)."""
    rows = 16
    for h_low in (13, 14, 25, 47, 91, 16, 64):
        m = make_module(rows=rows, pos_encoding="sinusoidal", pos_injection=2, backend=backend).eval()
        x_low, x_high = make_inputs(h_low, 7)
        full = (torch.arange(h_low) / h_low).expand(2, h_low)
        assert torch.equal(m(x_low, x_high), m(x_low, x_high, full)), h_low
        want = (torch.arange(rows) * h_low // rows) * rows // h_low
        assert torch.equal(coarse_positions(full, rows, 2), want.expand(2, rows))
        if h_low % rows:  # the positions differ from "coarse row j at position j" here
            assert not torch.equal(want, torch.arange(rows)), h_low


def test_positions_of_integer_pixel_rows_match_official_integer_math():
    """Fractions (top + r) / H_img in float32 give the official ((top + r) * rows) // H_img."""
    for rows, h, top, h_img in [(16, 96, 37, 1024), (22, 66, 5, 198), (12, 40, 0, 120), (16, 13, 300, 1024)]:
        rr = torch.arange(h)
        row_pos = ((top + rr).float() / h_img).expand(2, h)
        want = ((top + rr) * rows) // h_img
        picked = want[torch.arange(rows) * h // rows]  # coarse row j takes image row floor(j * h / rows)
        assert torch.equal(coarse_positions(row_pos, rows, 2), picked.expand(2, rows))


def test_bottom_half_crop_positions():
    rows = 16
    for h in (5, 13, 16, 40):
        row_pos = crop_row_pos(2, h, top=0.5, height=0.5)
        pos = coarse_positions(row_pos, rows, 2)
        assert pos.shape == (2, rows) and pos.dtype == torch.int64
        assert int(pos.min()) >= rows // 2 and int(pos.max()) <= rows - 1
        assert bool((pos[:, 1:] >= pos[:, :-1]).all())  # monotone
    # fractions just below 1.0 stay in the table's last regular row; exactly 1.0 is the pad position
    near_one = torch.full((1, 4), 0.99999999, dtype=torch.float64)
    assert coarse_positions(near_one, rows, 1).tolist() == [[rows - 1] * rows]
    assert coarse_positions(torch.full((1, 4), PAD_ROW_POS), rows, 1).tolist() == [[rows] * rows]


def _trunc_normal_pmf(sigma: float, clamp: int) -> dict[int, float]:
    """Closed form of clamp(trunc(N(0, sigma)), +-clamp): P(0) = erf(1 / (sigma sqrt 2)),
    P(+-k) = Phi((k + 1) / sigma) - Phi(k / sigma) for 0 < k < clamp, P(+-clamp) = 1 - Phi(clamp / sigma)."""
    def phi(x):
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))
    pmf = {0: math.erf(1 / (sigma * math.sqrt(2)))}
    for k in range(1, clamp + 1):
        p = 1 - phi(k / sigma) if k == clamp else phi((k + 1) / sigma) - phi(k / sigma)
        pmf[k] = pmf[-k] = p
    return pmf


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_position_jitter_matches_truncated_normal_closed_form(sigma):
    """Official jitter: trunc(N(0, sigma)) (torch 1.4's ``// 1``), clamped to +-(rows // 8)."""
    rows, batch = 16, 20000
    pe = PositionalEncoding1d(rows, 4, noise=sigma).train()
    assert pe.max_jitter == 2
    torch.manual_seed(0)
    shift = (pe.positions(batch) - torch.arange(rows))[:, 2:-2]  # rows the clamp to [0, rows] leaves alone
    n = shift.numel()
    pmf = _trunc_normal_pmf(sigma, 2)
    assert set(shift.unique().tolist()) <= set(pmf)
    counts = {k: int((shift == k).sum()) for k in pmf}
    for k, p in pmf.items():  # 5-sigma binomial bounds on every value
        assert abs(counts[k] - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (k, counts[k], n * p)
    if sigma == 1.0:  # every bin is well populated: chi-square, 4 degrees of freedom, 99.9 % quantile 18.47
        chi2 = sum((counts[k] - n * p) ** 2 / (n * p) for k, p in pmf.items())
        assert chi2 < 18.47, chi2
    assert abs(float(shift.float().mean())) < 5 * float(shift.float().std()) / math.sqrt(n)  # mean 0
    if sigma == 0.5:  # floor would move half the rows: truncation keeps 95.4 % in place
        assert abs(counts[0] / n - 0.9545) < 0.005


@pytest.mark.parametrize("pos_rfactor", [1, 2, 4, 8, 16, 32, 64])
def test_jitter_clamp_is_the_official_one(pos_rfactor):
    rows = 128 // pos_rfactor
    assert default_max_jitter(rows) == 16 // pos_rfactor
    pe = PositionalEncoding1d(rows, 4, noise=100.0).train()
    assert pe.max_jitter == 16 // pos_rfactor
    torch.manual_seed(1)
    wide = pe.positions(512)
    base = torch.arange(rows)
    assert int((wide - base).abs().max()) == 16 // pos_rfactor  # a big noise is clamped to +-(rows // 8)
    assert int(wide.min()) >= 0 and int(wide.max()) <= rows
    if pos_rfactor <= 16:
        assert int(wide.min()) == 0 and int(wide.max()) == rows  # clamped to [0, rows], and rows is reached


def test_position_jitter_training_only_and_seeded():
    rows = 16
    pe = PositionalEncoding1d(rows, 4, noise=0.5)
    base = torch.arange(rows).expand(4096, rows)
    pe.eval()
    assert torch.equal(pe.positions(4096), base)
    pe.train()
    torch.manual_seed(0)
    pos = pe.positions(4096)
    torch.manual_seed(0)
    assert torch.equal(pe.positions(4096), pos)  # torch RNG
    assert not torch.equal(pe.positions(4096), pos)
    # padded rows (position rows) are jittered like any other and stay in [0, rows]
    pad = torch.full((4096, 8), PAD_ROW_POS)
    jittered = PositionalEncoding1d(rows, 4, noise=1.0).train().positions(4096, pad)
    assert int(jittered.max()) == rows and int(jittered.min()) == rows - 2
    # training jitter changes the module output, eval mode is deterministic
    m = make_module(dropout=0.0, pos_noise=1.0, pos_encoding="sinusoidal").train()
    x_low, x_high = make_inputs(13, 13)
    torch.manual_seed(3)
    y1 = m(x_low, x_high)
    torch.manual_seed(3)
    torch.testing.assert_close(m(x_low, x_high), y1, rtol=0, atol=0)
    assert not torch.equal(m(x_low, x_high), y1)
    m.eval()
    torch.testing.assert_close(m(x_low, x_high), m(x_low, x_high), rtol=0, atol=0)


@pytest.mark.parametrize("crop", [864, 608, 768])
def test_coarse_positions_in_one_step_for_every_output_stride(crop):
    """Coarse row j takes image row floor(j * H_img / rows), whatever the feature height (OS 8/16/32)."""
    rows, full, top = 16, 2048, 517
    rr = torch.arange(crop)
    row_pos = ((top + rr).float() / full).expand(2, crop).contiguous()
    # direct integer computation: the image row each coarse row takes, and its official position
    want = ((top + (torch.arange(rows) * crop) // rows) * rows) // full
    assert torch.equal(coarse_positions(row_pos, rows, 2), want.expand(2, rows))
    m = HANet(8, 4, rows=rows, dropout=0.0, pos_noise=0.0).eval()
    seen = []
    original = m.pos_encoding.positions
    m.pos_encoding.positions = lambda batch, rp=None: seen.append(original(batch, rp)) or seen[-1]
    for os_ in (8, 16, 32):
        h = -(-crop // os_)
        x_low, x_high = torch.randn(2, 8, h, 3), torch.randn(2, 4, h, 3)
        m(x_low, x_high, row_pos)
        assert torch.equal(seen[-1], want.expand(2, rows)), os_
    # a two-step resize (to the feature height, then to rows) would pick other image rows at these sizes
    one_step = (torch.arange(rows) * crop) // rows
    two_step = [((torch.arange(rows) * h) // rows * crop) // h for h in (-(-crop // 8), -(-crop // 16), -(-crop // 32))]
    assert any(not torch.equal(idx, one_step) for idx in two_step)


def test_padded_rows_take_the_pad_position():
    rows = 8
    # 4 pad rows, 24 image rows at fractions 0.5 .. 0.96875, 4 pad rows
    row_pos = torch.cat([torch.full((4,), PAD_ROW_POS), 0.5 + torch.arange(24) / 48, torch.full((4,), PAD_ROW_POS)])
    pos = coarse_positions(row_pos[None], rows, 1)[0]
    # coarse row j takes row 4 j: rows 0 and 28 are pads (position 8); rows 4..24 are image rows 0, 4, ..., 20
    # at fractions 0.5, 0.583, 0.667, 0.75, 0.833, 0.917, i.e. floor(8 x) = 4, 4, 5, 6, 6, 7
    assert pos.tolist() == [8, 4, 4, 5, 6, 6, 7, 8]
    m = make_module(rows=rows, pos_encoding="learned").eval()
    with torch.no_grad():
        m.pos_encoding.weight.copy_(torch.arange(rows + 1, dtype=torch.float32)[:, None].expand(rows + 1, m.pos_encoding.dim))
    enc = m.pos_encoding.encoding(1, row_pos[None])
    assert enc[0, 0].tolist() == [8.0, 4.0, 4.0, 5.0, 6.0, 6.0, 7.0, 8.0]  # the table's extra row for pads


@pytest.mark.parametrize("bad", [float("nan"), -0.25, 1.5, float("inf"), 1.0000001])
def test_row_pos_values_are_validated(bad):
    m = HANet(8, 4, rows=4)
    x_low, x_high = torch.randn(2, 8, 10, 6), torch.randn(2, 4, 10, 6)
    row_pos = (torch.arange(10, dtype=torch.float64) / 10).expand(2, 10).clone()
    m(x_low, x_high, row_pos)
    row_pos[1, 3] = PAD_ROW_POS  # the pad position is allowed
    m(x_low, x_high, row_pos)
    row_pos[1, 7] = bad
    with pytest.raises(ValueError, match="row_pos must hold"):
        m(x_low, x_high, row_pos)


# ----------------------------------------------------------------------------- torch.compile, autocast
def _compile(m, **kwargs):
    torch._dynamo.reset()
    return torch.compile(m, fullgraph=True, **kwargs)


def test_compile_matches_eager():
    m = make_module(in_channels=16, out_channels=8, rows=8, dtype=torch.float32).eval()
    x_low, x_high = make_inputs(13, 26, in_channels=16, out_channels=8, dtype=torch.float32)
    row_pos = crop_row_pos(2, 13).float()
    with torch.no_grad():
        want = m(x_low, x_high, row_pos)
        got = _compile(m)(x_low, x_high, row_pos)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_compile_training_graph_with_autograd(compile_backend):
    """fullgraph over the training path (dropout, jitter, autograd of the ops), traced by aot_eager
    and compiled by inductor (what ``train --compile`` uses), forward and backward; inductor draws
    its random numbers as eager does (``fallback_random``) so that the two can be compared.
    (torch's own ``config.patch``: monkeypatch of pytest >= 9.2 deletes the setting on undo,
    which hides it from torch for the rest of the session.)"""
    import torch._inductor.config as inductor_config

    m = make_module(in_channels=16, out_channels=8, rows=8, dtype=torch.float32, pos_noise=1.0).train()
    x_low, x_high = make_inputs(13, 26, in_channels=16, out_channels=8, dtype=torch.float32)
    compiled = _compile(m, backend=compile_backend)

    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(5)
        got = run_with_grads(lambda _m, a, b, p: compiled(a, b, p, return_attention=True), m, x_low, x_high)
    torch.manual_seed(5)
    want = run_with_grads(module_call, m, x_low, x_high)
    assert_all_close(got[:2], want[:2], rtol=1e-5, atol=1e-6)
    assert_all_close(got[2], want[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_bf16(backend):
    m = make_module(in_channels=32, out_channels=8, dtype=torch.float32, backend=backend).train()
    x_low, x_high = make_inputs(13, 26, in_channels=32, out_channels=8, dtype=torch.float32)
    x_low.requires_grad_(True)
    x_high.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, attn = m(x_low, x_high, crop_row_pos(2, 13).float(), return_attention=True)
        loss = out.float().square().mean()
    loss.backward()
    assert attn.dtype == torch.bfloat16 and out.shape == x_high.shape
    assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(attn).all())
    for t in [x_low.grad, x_high.grad] + [p.grad for p in m.parameters()]:
        assert t is not None and bool(torch.isfinite(t).all())
    # bf16 feature maps stay bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x_low.detach().bfloat16(), x_high.detach().bfloat16())
    assert out.dtype == torch.bfloat16 and bool(torch.isfinite(out).all())


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(in_channels=0), ValueError, "in_channels"),
        (dict(out_channels=2.0), TypeError, "out_channels"),
        (dict(rows=0), ValueError, "rows"),
        (dict(reduction=-1), ValueError, "reduction"),
        (dict(kernel_size=4), ValueError, "kernel_size"),
        (dict(kernel_size=True), TypeError, "kernel_size"),
        (dict(num_convs=4), ValueError, "num_convs"),
        (dict(pooling="mean"), ValueError, "pooling"),
        (dict(dropout=1.0), ValueError, "dropout"),
        (dict(dropout=-0.1), ValueError, "dropout"),
        (dict(dropout=float("nan")), TypeError, "dropout"),
        (dict(pos_encoding="rope"), ValueError, "pos_encoding"),
        (dict(pos_injection=3), ValueError, "pos_injection"),
        (dict(pos_noise=-1.0), ValueError, "pos_noise"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
def test_bad_constructor_args(kwargs, error, match):
    args = dict(in_channels=8, out_channels=4) | kwargs
    with pytest.raises(error, match=match):
        HANet(**args)


def test_bad_forward_inputs():
    m = HANet(8, 4)
    x_low, x_high = torch.randn(2, 8, 10, 6), torch.randn(2, 4, 20, 6)
    cases = [
        ((x_low[0], x_high), ValueError, "x_low must be a 4-D"),
        ((x_low, x_high[0]), ValueError, "x_high must be a 4-D"),
        ((x_low.numpy(), x_high), TypeError, "x_low must be a torch.Tensor"),
        ((x_low[:, :4], x_high), ValueError, "x_low must have in_channels=8"),
        ((x_low, torch.randn(2, 5, 20, 6)), ValueError, "x_high must have out_channels=4"),
        ((x_low, x_high[:1]), ValueError, "x_high must have x_low's batch size"),
        ((x_low, x_high, torch.rand(3, 20)), ValueError, r"row_pos must have shape \[B, H_img\] with B = 2"),
        ((x_low, x_high, torch.rand(2, 10, 1)), ValueError, "row_pos must have shape"),
        ((x_low, x_high, torch.zeros(2, 10, dtype=torch.long)), TypeError, "row_pos must be floating"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            m(*args)
    with pytest.raises(TypeError, match="x_low must have a floating"):
        HANet(8, 4, pos_encoding=None)(x_low.long(), x_high)


# ----------------------------------------------------------------------------- second order, graph capture (issue 13)
def _second_order_grads(fn, inputs, params):
    """d/d(inputs, params) of |d loss / d(inputs, params)|^2 for ``loss = (fn(*inputs) ** 2).mean()``."""
    targets = [*inputs, *params]
    first = torch.autograd.grad((fn(*inputs) ** 2).mean(), targets, create_graph=True)
    return torch.autograd.grad(sum((g**2).sum() for g in first), targets)


def _assert_close_to_scale(got, want):
    """Each tensor equal to 1e-7 of its own largest entry (a random model's second-order
    gradients can be tiny in absolute terms), up to rounding noise 1e-10 of the largest entry
    of all (entries whose true value is 0); the inputs' gradient (first) is not all zero."""
    largest = max(w.abs().max().item() for w in want)
    assert want[0].abs().max().item() > 0
    for i, (g, w) in enumerate(zip(got, want)):
        atol = 1e-7 * w.abs().max().item() + 1e-10 * largest
        torch.testing.assert_close(g, w, rtol=1e-7, atol=atol, msg=lambda s, i=i: f"tensor {i}: {s}")


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_second_order_gradients_match_reference(pooling):
    """The module's second-order gradients (inputs and parameters) on the fused backend equal the
    reference backend's; they came back without the backward ops' own derivatives (zeros)."""
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is unavailable")
    got_want = []
    for backend in ("cpu", "reference"):
        m = make_module(in_channels=16, out_channels=6, rows=8, pooling=pooling, backend=backend)
        x_low, x_high = (t.requires_grad_() for t in make_inputs(13, 10, in_channels=16))
        got_want.append(_second_order_grads(m, (x_low, x_high), list(m.parameters())))
    _assert_close_to_scale(got_want[0], got_want[1])


def test_whole_model_second_order_gradients_match_reference():
    """A whole (tiny) DeepLabv3+ with HANet at L1, L4 and L5 (L5 max-pools): second-order
    gradients with respect to the image and HANet's parameters equal the reference backend's."""
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is unavailable")
    from hanet_fast.models import HANetConfig, deeplabv3plus

    image = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got_want = []
    for backend in ("cpu", "reference"):
        torch.manual_seed(0)
        model = deeplabv3plus("mobilenet_v2", output_stride=16, num_classes=5, hanet_layers=(1, 0, 0, 1, 1),
                              hanet=HANetConfig(rows=4, backend=backend), aux=False).double().eval()
        hanet_params = [p for name, p in model.named_parameters() if "hanet" in name]
        assert hanet_params
        x = image.clone().requires_grad_()
        got_want.append(_second_order_grads(lambda t: model(t).logits, (x,), hanet_params))
    _assert_close_to_scale(got_want[0], got_want[1])


def test_jit_script_is_refused_and_trace_and_export_work():
    """torch.jit.script fails with one clear error (it failed deep inside on a type annotation);
    the supported captures, torch.jit.trace and torch.export, reproduce the module."""
    m = make_module(in_channels=16, out_channels=6, rows=8, dtype=torch.float32).eval()
    x_low, x_high = make_inputs(13, 10, in_channels=16, dtype=torch.float32)
    for target in (m, torch.nn.ModuleDict({"head": m})):
        with pytest.raises(RuntimeError, match=r"HANet does not support torch.jit.script; .*torch.export"):
            torch.jit.script(target)
    want = m(x_low, x_high)
    torch.testing.assert_close(torch.jit.trace(m, (x_low, x_high))(x_low, x_high), want)
    torch.testing.assert_close(torch.export.export(m, (x_low, x_high)).module()(x_low, x_high), want)

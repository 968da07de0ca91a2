"""Fused Pallas kernels of the depth-aware convolution (``implementation='pallas'``).

``Y(p) = Σ_o (H_o(p) · X(p·s + o·d)) @ W_o`` as an implicit GEMM: each program owns a tile of
``block_h × block_w`` output pixels × ``block_cout`` output channels, keeps an f32 accumulator in
registers and walks the blocks of ``Cin`` × the ``K = kh·kw`` offsets, loading for every step the
tile's view of the zero-padded input at that offset, the tile's ``H_o`` from the similarity array
``sim`` (``(N, H', W', K)``, computed by :func:`drd_jax.ops.depth_conv.depth_similarity`, so the
invalid-depth rules live there; ``K/Cin`` of the activations) and ``W_o``'s block, and doing one
``(pixels, Cin block) @ (Cin block, Cout block)`` dot. The ``(N, H', W', K·Cin)`` patch tensor is
never built and there are no K passes over HBM: one kernel reads each input tile region (its K
overlapping views are re-reads served by L1/L2, as are the neighbouring tiles' halos and the
re-reads of the tile by the ``Cout / block_cout`` programs of the other output-channel blocks) and
writes each output tile once. Backward (``jax.custom_vjp``; only ``x``, ``sim`` and the kernel are
kept between the passes; first-order reverse mode only), also Pallas:

* ``dW_o = Σ_p (H_o ⊙ shift_o(x))ᵀ g``: grid over (offset × pixel split, Cin block, Cout block);
  each program reduces over its share of the pixel tiles into an f32 block, and the (small)
  partial sums of the splits are added outside the kernel.
* ``dx``: a gather over INPUT tiles (no atomics). Input row ``q·s_h + φ`` (phase ``φ``) is read by
  tap ``i`` of output row ``q + (φ − i·d_h)/s_h`` when the division is exact (likewise columns);
  per tile of input positions of one phase this is a contiguous tile of outputs, so each program
  sums, for each of the ``s_h·s_w`` phases of its tile, ``H_o ⊙ (g @ W_oᵀ)`` over the offsets that
  reach that phase (known at trace time): the transposed convolution for strides 2, without the
  zero-inserted cotangent and without work on the offsets that do not reach a phase.

Layout and padding (outside the kernels, one copy each): ``x`` is zero-padded once, with the conv's
padding (the semantics of :func:`drd_jax.ops.windows.pad_spatial`, negative entries crop) and up to
what the padded tiles read and to the ``Cin`` block, in one ``lax.pad``; it is then viewed (a free
reshape) as ``(N, H/s_h, s_h, W/s_w, s_w, Cin)`` so that the strided rows and columns one offset
reads for a tile are contiguous runs at a fixed phase (Pallas's interpreter has no strided loads).
``sim`` is made offset-major ``(N, K, H', W')`` and the kernel and ``g`` are zero-padded to the
blocks. Sizes the blocks do not divide are thus padded with zeros and the outputs sliced back.

Backend: Pallas's **Triton** backend on GPU (``plgpu`` = ``jax.experimental.pallas.triton``).
It runs on every NVIDIA GPU Triton supports (not only Hopper), cross-lowers from a CPU-only
machine, and its block model (programs loading power-of-two blocks through pointers, with
``dot`` on tensor cores) is exactly an implicit GEMM with halo reads at arbitrary offsets, which
Mosaic GPU (Hopper/Blackwell only) would need explicit TMA/SMEM pipelining and warpgroup layouts
for. Block sizes are powers of two (a dot's every dimension ≥ 16 for Triton) and are parameters,
with ``num_warps`` and ``num_stages``; the defaults are untuned. The kernels index per dimension
(every index ≥ 0, within the array); Pallas forms the flat offsets, in 64 bits for arrays over
4 GiB.

On CPU (and wherever the lowering platform is ``cpu``) the same kernels run with Pallas's
``interpret=True``: :func:`jax.lax.platform_dependent` picks the interpreted ``pallas_call`` for
``cpu`` and the Triton one for the GPUs, so ``jit(...).lower(lowering_platforms=('cuda',))`` on a
CPU machine emits the Triton kernels. On a TPU backend :func:`depth_conv_pallas` refuses (there is
no Mosaic TPU kernel; see below).

TPU (Mosaic, not written): the structure maps — grid over (image row band, Cout block), the K × Cin
loop as the innermost reduction with an f32 VMEM accumulator, ``pltpu.dot`` on the MXU. What
differs: Mosaic wants ``BlockSpec``-pipelined VMEM blocks whose last two dims are (8, 128)-aligned
rather than pointer loads at arbitrary offsets, so the halo (``(rows − 1)·s + (kh − 1)·d + 1``
input rows of a band, fc6's dilation 12 included) is DMA'd explicitly from an ``ANY``-space ref
(``pltpu.make_async_copy``, double-buffered) and the per-offset shifts are static slices of that
VMEM window; channels (Cin, Cout) should be lane-padded to 128, and the strided views use the same
``(H / s, s, W / s, s)`` phase layout. ``dx`` and ``dW`` keep their grids; dW's pixel reduction
becomes an ``arbitrary`` grid axis accumulating into the resident output block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from drd_jax.errors import ConfigError, UserError

# Block-size bounds (powers of two): Triton's dot needs every dimension ≥ 16.
MIN_BLOCK = 16
MAX_BLOCK_W = 64
MAX_BLOCK_C = 64
# Default tile: block_w columns and up to TILE_PIXELS / block_w rows (the dots' M dimension).
TILE_PIXELS = 64
# dW: the reduction over the pixel tiles is split until about this many programs run.
DW_TARGET_PROGRAMS = 512


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _pick_block(size: int, hi: int, lo: int = MIN_BLOCK) -> int:
    """The power of two in ``[lo, hi]`` that pads ``size`` least (the larger one on ties)."""
    best = lo
    b = lo
    while b <= hi:
        if _round_up(size, b) <= _round_up(size, best):
            best = b
        b *= 2
    return best


def _check_block(value, name: str) -> int:
    if not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value!r}")
    return value


def _largest_divisor_at_most(n: int, cap: int) -> int:
    cap = max(1, min(n, cap))
    return max(r for r in range(1, cap + 1) if n % r == 0)


def _acc_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def _index(v):
    """A static index as an int32 scalar (the interpreter's load rule wants arrays, not ints)."""
    return jnp.asarray(v, jnp.int32)


def _divmod(a, b: int):
    """``(a // b, a % b)`` of a traced int ``a ≥ 0`` by a static ``b``; no ops for ``b == 1``.

    ``lax.div`` / ``lax.rem`` rather than ``//`` / ``%``: in jax 0.10.2 the Triton lowering of
    jnp's ``%`` on a ``fori_loop`` index fails (``AssertionError: ('i32', 'i1')`` in its rem rule).
    """
    if b == 1:
        return a, jnp.zeros_like(a)
    b = jnp.asarray(b, a.dtype)
    return lax.div(a, b), lax.rem(a, b)  # a ≥ 0 here: truncation is floor


def _dot(a, b, *, contract=(1, 0), precision, acc):
    return lax.dot_general(
        a,
        b,
        (((contract[0],), (contract[1],)), ((), ())),
        precision=precision,
        preferred_element_type=acc,
    )


def _call(kernel, *, out_shape, grid, interpret, config, name):
    """``pallas_call`` of ``kernel``: interpreted when lowered for ``cpu`` (or ``tpu``, which has
    no kernel here), Triton for the GPUs; ``interpret`` True / False forces one."""
    params = plgpu.CompilerParams(num_warps=config["num_warps"], num_stages=config["num_stages"])

    def run(*args, interpret):
        return pl.pallas_call(
            kernel,
            out_shape=out_shape,
            grid=grid,
            interpret=interpret,
            compiler_params=params,
            name=name,
        )(*args)

    def call(*args):
        if interpret is not None:
            return run(*args, interpret=interpret)
        return lax.platform_dependent(
            *args,
            cpu=functools.partial(run, interpret=True),
            tpu=functools.partial(run, interpret=True),
            default=functools.partial(run, interpret=False),
        )

    return call


# --------------------------------------------------------------------------------------------
# Layout: padded, phase-split input; transposed, padded similarity; padded kernel.
# --------------------------------------------------------------------------------------------


class _Layout:
    """Static sizes of one call: blocks, padded extents, the phase views of the input.

    A tile is ``bh`` rows × ``bw`` columns of pixels (``bh·bw`` rows of the dots). Input row
    ``r = q·s_h + φ`` is stored at ``[q, φ]`` (likewise columns), so that the rows (columns) one
    offset reads for a tile of outputs are a contiguous run of ``q`` at a fixed phase ``φ``.
    """

    def __init__(self, x_shape, kernel_shape, geometry, config):
        k, s, d, pads, out = geometry
        self.k, self.s, self.d, self.pads, self.out = k, s, d, pads, out
        self.n, self.h, self.w, self.cin = x_shape
        self.kk, _, self.cout = kernel_shape
        bw = config["block_w"] or _pick_block(out[1], MAX_BLOCK_W)
        bh = config["block_h"] or _pick_block(out[0], max(1, TILE_PIXELS // bw), lo=1)
        bci = config["block_cin"] or _pick_block(self.cin, MAX_BLOCK_C)
        bco = config["block_cout"] or _pick_block(self.cout, MAX_BLOCK_C)
        self.bh = _check_block(bh, "block_h")
        self.bw = _check_block(bw, "block_w")
        self.bci = _check_block(bci, "block_cin")
        self.bco = _check_block(bco, "block_cout")
        self.hp = self.h + pads[0][0] + pads[0][1]  # padded input rows
        self.wp = self.w + pads[1][0] + pads[1][1]  # padded input columns
        self.ho_p = _round_up(out[0], self.bh)
        self.wo_p = _round_up(out[1], self.bw)
        self.ci_p = _round_up(self.cin, self.bci)
        self.co_p = _round_up(self.cout, self.bco)
        # forward / dW: tap i of output row y reads q = y + ⌊i·d_h / s_h⌋ < ho_p + ⌊(kh−1)·d_h/s_h⌋
        self.hq = self.ho_p + ((k[0] - 1) * d[0]) // s[0]
        self.wq = self.wo_p + ((k[1] - 1) * d[1]) // s[1]
        # dx: every padded input row / column, in the phase view, padded to the tile
        self.hqx_p = _round_up(-(-self.hp // s[0]), self.bh)
        self.wqx_p = _round_up(-(-self.wp // s[1]), self.bw)
        # dx: input q (phase φ) gets tap i from output q + ⌊(φ − i·d_h) / s_h⌋ ≥ q − lm_h, so g
        # and sim get lm_h rows (lm_w columns) of zeros in front
        self.lm_h = -(-((k[0] - 1) * d[0]) // s[0])
        self.lm_w = -(-((k[1] - 1) * d[1]) // s[1])

    def x_phases(self, x):
        """``(N, hq, s_h, wq, s_w, ci_p)``: x zero-padded (conv padding, tiles, channels) by one
        ``lax.pad`` (negative entries crop), then viewed by phase (a free reshape)."""
        (lo_h, _), (lo_w, _) = self.pads
        rows, cols = self.hq * self.s[0], self.wq * self.s[1]
        config = (
            (0, 0, 0),
            (lo_h, rows - self.h - lo_h, 0),
            (lo_w, cols - self.w - lo_w, 0),
            (0, self.ci_p - self.cin, 0),
        )
        xp = lax.pad(x, jnp.zeros((), x.dtype), config)
        return xp.reshape(self.n, self.hq, self.s[0], self.wq, self.s[1], self.ci_p)

    def sim_t(self, sim, top=0, left=0, height=None, width=None):
        """``(N, K, top + height, left + width)``: sim offset-major, zero-padded around."""
        height = self.ho_p if height is None else height
        width = self.wo_p if width is None else width
        config = (
            (0, 0, 0),
            (0, 0, 0),
            (top, height - self.out[0], 0),
            (left, width - self.out[1], 0),
        )
        return lax.pad(sim.transpose(0, 3, 1, 2), jnp.zeros((), sim.dtype), config)

    def g_p(self, g, dtype, top=0, left=0, height=None, width=None):
        """``(N, top + height, left + width, co_p)``: the output cotangent zero-padded around."""
        height = self.ho_p if height is None else height
        width = self.wo_p if width is None else width
        config = (
            (0, 0, 0),
            (top, height - self.out[0], 0),
            (left, width - self.out[1], 0),
            (0, self.co_p - self.cout, 0),
        )
        return lax.pad(g.astype(dtype), jnp.zeros((), dtype), config)

    def kernel_p(self, kernel_k):
        """``(K, ci_p, co_p)``: the kernel zero-padded to the channel blocks."""
        return jnp.pad(kernel_k, ((0, 0), (0, self.ci_p - self.cin), (0, self.co_p - self.cout)))


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


def _forward(x, sim, kernel_k, geometry, precision, config):
    lay = _Layout(x.shape, kernel_k.shape, geometry, config)
    k, s, d, (ho, wo) = lay.k, lay.s, lay.d, lay.out
    acc_t = _acc_dtype(x.dtype)
    dtype = x.dtype
    bh, bw, bci, bco = lay.bh, lay.bw, lay.bci, lay.bco
    m = bh * bw
    row_blocks = lay.ho_p // bh
    n_cin_blocks = lay.ci_p // bci

    def kernel(x_ref, sim_ref, w_ref, o_ref):
        n, rb = _divmod(pl.program_id(0), row_blocks)
        y0 = pl.multiple_of(rb * bh, bh)
        q0 = pl.multiple_of(pl.program_id(1) * bw, bw)
        co0 = pl.multiple_of(pl.program_id(2) * bco, bco)
        taps = []
        for i in range(k[0]):
            rows, row_phase = divmod(i * d[0], s[0])
            for j in range(k[1]):
                cols, col_phase = divmod(j * d[1], s[1])
                o = _index(i * k[1] + j)
                h = plgpu.load(sim_ref.at[n, o, pl.ds(y0, bh), pl.ds(q0, bw)])
                at = (pl.ds(y0 + rows, bh), _index(row_phase), pl.ds(q0 + cols, bw))
                taps.append((o, at, _index(col_phase), h.astype(acc_t).reshape(m, 1)))

        def body(cb, acc):
            c0 = pl.multiple_of(cb * bci, bci)
            for o, at, col_phase, h in taps:
                xv = plgpu.load(x_ref.at[n, *at, col_phase, pl.ds(c0, bci)]).reshape(m, bci)
                wv = plgpu.load(w_ref.at[o, pl.ds(c0, bci), pl.ds(co0, bco)])
                xw = (xv.astype(acc_t) * h).astype(dtype)
                acc = acc + _dot(xw, wv, precision=precision, acc=acc_t)
            return acc

        acc = lax.fori_loop(0, n_cin_blocks, body, jnp.zeros((m, bco), acc_t))
        out = acc.astype(o_ref.dtype).reshape(bh, bw, bco)
        plgpu.store(o_ref.at[n, pl.ds(y0, bh), pl.ds(q0, bw), pl.ds(co0, bco)], out)

    call = _call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((lay.n, lay.ho_p, lay.wo_p, lay.co_p), dtype),
        grid=(lay.n * row_blocks, lay.wo_p // bw, lay.co_p // bco),
        interpret=config["interpret"],
        config=config,
        name="depth_conv_fwd",
    )
    y = call(lay.x_phases(x), lay.sim_t(sim), lay.kernel_p(kernel_k))
    return y[:, :ho, :wo, : lay.cout]


# --------------------------------------------------------------------------------------------
# Backward: dW
# --------------------------------------------------------------------------------------------


def _backward_dw(x, sim, kernel_k, g, geometry, precision, config):
    lay = _Layout(x.shape, kernel_k.shape, geometry, config)
    k, s, d = lay.k, lay.s, lay.d
    acc_t = _acc_dtype(x.dtype)
    dtype = x.dtype
    bh, bw, bci, bco = lay.bh, lay.bw, lay.bci, lay.bco
    m = bh * bw
    n_ci, n_co = lay.ci_p // bci, lay.co_p // bco
    row_blocks, col_blocks = lay.ho_p // bh, lay.wo_p // bw
    tiles = lay.n * row_blocks * col_blocks
    splits = config["dw_splits"]
    if splits is None:
        splits = -(-DW_TARGET_PROGRAMS // (lay.kk * n_ci * n_co))
    splits = _largest_divisor_at_most(tiles, splits)
    per_split = tiles // splits

    def kernel(x_ref, sim_ref, g_ref, o_ref):
        split, o = _divmod(pl.program_id(0), lay.kk)
        c0 = pl.multiple_of(pl.program_id(1) * bci, bci)
        co0 = pl.multiple_of(pl.program_id(2) * bco, bco)
        i, j = _divmod(o, k[1])
        rows, row_phase = _divmod(i * d[0], s[0])
        cols, col_phase = _divmod(j * d[1], s[1])

        def body(t, acc):
            image_row, cb = _divmod(split * per_split + t, col_blocks)
            n, rb = _divmod(image_row, row_blocks)
            y0 = pl.multiple_of(rb * bh, bh)
            q0 = pl.multiple_of(cb * bw, bw)
            h = plgpu.load(sim_ref.at[n, o, pl.ds(y0, bh), pl.ds(q0, bw)])
            at = (n, pl.ds(y0 + rows, bh), row_phase, pl.ds(q0 + cols, bw), col_phase)
            xv = plgpu.load(x_ref.at[*at, pl.ds(c0, bci)]).reshape(m, bci)
            xw = (xv.astype(acc_t) * h.astype(acc_t).reshape(m, 1)).astype(dtype)
            gv = plgpu.load(g_ref.at[n, pl.ds(y0, bh), pl.ds(q0, bw), pl.ds(co0, bco)])
            gv = gv.reshape(m, bco)
            return acc + _dot(xw, gv, contract=(0, 0), precision=precision, acc=acc_t)

        acc = lax.fori_loop(0, per_split, body, jnp.zeros((bci, bco), acc_t))
        plgpu.store(o_ref.at[split, o, pl.ds(c0, bci), pl.ds(co0, bco)], acc)

    call = _call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((splits, lay.kk, lay.ci_p, lay.co_p), acc_t),
        grid=(splits * lay.kk, n_ci, n_co),
        interpret=config["interpret"],
        config=config,
        name="depth_conv_dw",
    )
    dw = call(lay.x_phases(x), lay.sim_t(sim), lay.g_p(g, dtype))
    return dw.sum(axis=0)[:, : lay.cin, : lay.cout].astype(kernel_k.dtype)


# --------------------------------------------------------------------------------------------
# Backward: dx (gather over input tiles)
# --------------------------------------------------------------------------------------------


def _backward_dx(x, sim, kernel_k, g, geometry, precision, config):
    lay = _Layout(x.shape, kernel_k.shape, geometry, config)
    k, s, d, pads, (ho, wo) = lay.k, lay.s, lay.d, lay.pads, lay.out
    acc_t = _acc_dtype(x.dtype)
    dtype = x.dtype
    bh, bw, bci, bco = lay.bh, lay.bw, lay.bci, lay.bco
    m = bh * bw
    n_ci, n_co = lay.ci_p // bci, lay.co_p // bco
    row_blocks = lay.hqx_p // bh
    lm_h, lm_w = lay.lm_h, lay.lm_w
    # output rows / columns that g and sim provide after the lm zeros (zeros past H', W')
    height, width = max(ho, lay.hqx_p), max(wo, lay.wqx_p)

    def taps_of(row_phase, col_phase):
        """(offset, output rows shift, output columns shift) of the taps that reach a phase."""
        taps = []
        for i in range(k[0]):
            # input q·s_h + φ, tap i ← output q + (φ − i·d_h)/s_h when exact; +lm_h keeps it ≥ 0
            shift_r, rest_r = divmod(row_phase + lm_h * s[0] - i * d[0], s[0])
            for j in range(k[1]):
                shift_c, rest_c = divmod(col_phase + lm_w * s[1] - j * d[1], s[1])
                if rest_r == 0 and rest_c == 0:
                    taps.append((i * k[1] + j, shift_r, shift_c))
        return taps

    phases = [(pr, pc, taps_of(pr, pc)) for pr in range(s[0]) for pc in range(s[1])]

    def kernel(sim_ref, w_ref, g_ref, o_ref):
        n, rb = _divmod(pl.program_id(0), row_blocks)
        r0 = pl.multiple_of(rb * bh, bh)
        q0 = pl.multiple_of(pl.program_id(1) * bw, bw)
        c0 = pl.multiple_of(pl.program_id(2) * bci, bci)
        for row_phase, col_phase, phase_taps in phases:  # one phase for strides 1
            taps = []
            for o, shift_r, shift_c in phase_taps:
                at = (pl.ds(r0 + shift_r, bh), pl.ds(q0 + shift_c, bw))
                h = plgpu.load(sim_ref.at[n, _index(o), *at]).astype(acc_t).reshape(m, 1)
                taps.append((_index(o), at, h))

            def body(cb, acc, taps=taps):
                co0 = pl.multiple_of(cb * bco, bco)
                for o, at, h in taps:
                    gv = plgpu.load(g_ref.at[n, *at, pl.ds(co0, bco)]).reshape(m, bco)
                    wv = plgpu.load(w_ref.at[o, pl.ds(c0, bci), pl.ds(co0, bco)])
                    acc = acc + h * _dot(gv, wv, contract=(1, 1), precision=precision, acc=acc_t)
                return acc

            acc = jnp.zeros((m, bci), acc_t)
            if taps:  # a phase no tap reaches (e.g. 1×1 kernel, strides 2) has zero gradient
                acc = lax.fori_loop(0, n_co, body, acc)
            phase = (_index(row_phase), pl.ds(q0, bw), _index(col_phase))
            at = (n, pl.ds(r0, bh), *phase, pl.ds(c0, bci))
            plgpu.store(o_ref.at[at], acc.astype(dtype).reshape(bh, bw, bci))

    shape = (lay.n, lay.hqx_p, s[0], lay.wqx_p, s[1], lay.ci_p)
    call = _call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(shape, dtype),
        grid=(lay.n * row_blocks, lay.wqx_p // bw, n_ci),
        interpret=config["interpret"],
        config=config,
        name="depth_conv_dx",
    )
    dxq = call(
        lay.sim_t(sim, lm_h, lm_w, height, width),
        lay.kernel_p(kernel_k),
        lay.g_p(g, dtype, lm_h, lm_w, height, width),
    )
    dxp = dxq.reshape(lay.n, lay.hqx_p * s[0], lay.wqx_p * s[1], lay.ci_p)
    dxp = dxp[:, : lay.hp, : lay.wp, : lay.cin]
    # undo the conv padding (negative pads cropped x: their input pixels get zero gradient)
    undo = [(0, 0, 0), (-pads[0][0], -pads[0][1], 0), (-pads[1][0], -pads[1][1], 0), (0, 0, 0)]
    return lax.pad(dxp, jnp.zeros((), dxp.dtype), undo)


# --------------------------------------------------------------------------------------------
# custom_vjp and the _IMPLS entry
# --------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _pallas(x, sim, kernel_k, geometry, precision, config_items):
    return _forward(x, sim, kernel_k, geometry, precision, dict(config_items))


def _pallas_fwd(x, sim, kernel_k, geometry, precision, config_items):
    return _pallas(x, sim, kernel_k, geometry, precision, config_items), (x, sim, kernel_k)


def _pallas_bwd(geometry, precision, config_items, residuals, g):
    x, sim, kernel_k = residuals
    dx = _dx(x, sim, kernel_k, g, geometry, precision, config_items)
    dw = _dw(x, sim, kernel_k, g, geometry, precision, config_items)
    return dx.astype(x.dtype), jnp.zeros_like(sim), dw


_pallas.defvjp(_pallas_fwd, _pallas_bwd)


class NoTpuKernelError(ConfigError):
    """``implementation='pallas'`` asked for on a TPU backend: there are GPU kernels only."""


class HigherOrderGradientError(UserError, NotImplementedError):
    """Differentiating the Pallas backward pass (a second derivative) is not supported."""


def _no_higher_order(*_):
    raise HigherOrderGradientError(
        "depth_aware_conv(implementation='pallas') supports first-order reverse mode only "
        "(jax.grad, jax.vjp); use implementation='fast' for higher-order derivatives"
    )


def _backward_pass(fn):
    """``fn`` (dx or dW) as a custom_vjp whose own derivative is a clear error, not a crash
    inside the Pallas kernels (which have no differentiation rules)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
    def wrapped(x, sim, kernel_k, g, geometry, precision, config_items):
        return fn(x, sim, kernel_k, g, geometry, precision, dict(config_items))

    def fwd(x, sim, kernel_k, g, geometry, precision, config_items):
        return wrapped(x, sim, kernel_k, g, geometry, precision, config_items), None

    wrapped.defvjp(fwd, _no_higher_order)
    return wrapped


_dx = _backward_pass(_backward_dx)
_dw = _backward_pass(_backward_dw)


def depth_conv_pallas(
    x,
    sim,
    kernel_k,
    *,
    geometry,
    precision=None,
    block_h: int | None = None,
    block_w: int | None = None,
    block_cin: int | None = None,
    block_cout: int | None = None,
    dw_splits: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool | None = None,
):
    """D-Conv ``Σ_o (H_o ⊙ shift_o(x)) @ W_o`` by the fused Pallas kernels (module docstring).

    Args:
      x: ``(N, H, W, Cin)`` float32 or bfloat16 (float64 under x64 in interpret mode only).
      sim: ``(N, H', W', K)`` float32 depth similarity (offsets row-major), as from
        :func:`drd_jax.ops.depth_conv.depth_similarity` with the same geometry.
      kernel_k: ``(K, Cin, Cout)`` kernel, dtype of ``x``.
      geometry: ``(k, s, d, pads, out_hw)`` from :func:`drd_jax.ops.windows.window_geometry`.
      precision: ``lax.Precision`` of the in-kernel dots (``None``: the backend default, TF32 for
        float32 on Triton, as XLA's GPU convs; ``HIGHEST``: IEEE float32).
      block_h, block_w: a tile of pixels, ``block_h`` rows × ``block_w`` columns (output pixels
        for the forward and dW, input pixels of one phase for dx); powers of two with
        ``block_h·block_w ≥ 16`` on GPU. Defaults: ``block_w`` in ``[16, 64]`` and ``block_h``
        in ``[1, TILE_PIXELS / block_w]``, the ones that pad ``W'`` and ``H'`` least.
      block_cin, block_cout: channel blocks (powers of two, ≥ 16 on GPU); defaults in ``[16,
        64]``, the ones that pad least.
      dw_splits: dW splits its reduction over the pixel tiles into this many programs' partial
        sums (a divisor of the tile count; default: enough for about
        :data:`DW_TARGET_PROGRAMS` programs).
      num_warps, num_stages: Triton compiler parameters.
      interpret: ``None`` (default): interpret mode when lowering for ``cpu``, Triton for GPUs;
        ``True`` / ``False`` force it.

    Returns:
      ``(N, H', W', Cout)`` in ``x``'s dtype (f32 accumulation). Differentiable in ``x`` and
      ``kernel_k`` by first-order reverse mode (custom VJP, both cotangents by Pallas kernels);
      ``sim`` gets a zero cotangent (no gradient flows into depth).

    Raises:
      ValueError: for a block size that is not a power of two.
      NoTpuKernelError: (a ValueError) on a TPU backend, which has no kernel here.
      HigherOrderGradientError: when the backward pass is itself differentiated (e.g. a gradient
        penalty); forward mode (``jax.jvp``) fails in JAX's ``custom_vjp`` with its own error.
    """
    if interpret is None and jax.default_backend() == "tpu":
        raise NoTpuKernelError(
            "implementation='pallas' has Triton (GPU) kernels only, none for TPU: use "
            "implementation='fast' on TPU"
        )
    out = geometry[4]
    if 0 in (x.shape[0], x.shape[3], kernel_k.shape[-1], *out):  # nothing to compute (lax's zeros)
        return jnp.zeros((x.shape[0], *out, kernel_k.shape[-1]), x.dtype)
    config = dict(
        block_h=block_h,
        block_w=block_w,
        block_cin=block_cin,
        block_cout=block_cout,
        dw_splits=dw_splits,
        num_warps=num_warps,
        num_stages=num_stages,
        interpret=interpret,
    )
    return _pallas(x, sim, kernel_k, geometry, precision, tuple(sorted(config.items())))

//! A stack of post-norm transformer encoder blocks, forward only, fused: ACMR's evaluation on the
//! CPU.
//!
//! ACMR scores each (user, candidate) pair as its own sequence of about ten positions of 32
//! dimensions through four blocks. With torch each block is a dozen operations over the whole
//! batch (matrix products whose bias is first copied into the output, a LayerNorm that runs at
//! 1 GB/s on rows of 32, residual additions, a ReLU), each a pass over memory: at 21 GFLOP/s,
//! a fifth of what one core's AVX-512 units do. Here a few dozen sequences at a time go
//! through every block while they stay in the core's cache, the matrix products run on a
//! register-blocked kernel with the bias and ReLU applied where the product is written (the
//! residual and the norm follow in one pass), and padded positions are never computed: only
//! real positions are gathered.
//!
//! The maths is `nn.TransformerEncoderLayer`'s (post-norm, ReLU feed-forward) in evaluation:
//! `x = norm1(x + out(attention(in(x))))`, `x = norm2(x + ff2(relu(ff1(x))))`. Results agree
//! with torch's to float rounding, not bit for bit (sums run in another order). Each sequence
//! is computed alone and its real positions only, so a result does not depend on the width it
//! is padded to, on which other sequences share the call or on the thread count.

use crate::attention::{Layout, Scratch, F4, LANES};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Sequences per task: their activations (at ACMR's sizes and a width of 51, the longest,
/// 0.9 MB for the feed-forward's) stay in a core's L2 cache through all the blocks.
const TASK: usize = 32;

/// A linear map as torch stores it: `weight` is `(out, in)` row-major, `bias` is `(out,)`.
#[derive(Clone, Copy, Debug)]
pub struct Dense<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
}

/// A LayerNorm over the last axis: `weight` and `bias` `(d,)`, `eps` added to the variance.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f32,
}

/// One encoder block's parameters: the attention's input projection `(3d, d)` (queries, keys,
/// values) and output projection `(d, d)`, the feed-forward `(ff, d)` and `(d, ff)`, the norms.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    pub in_proj: Dense<'a>,
    pub out_proj: Dense<'a>,
    pub ff1: Dense<'a>,
    pub ff2: Dense<'a>,
    pub norm1: Norm<'a>,
    pub norm2: Norm<'a>,
}

/// `blocks` applied in turn to `x` `(n, width, d)`, of which the positions where `real`
/// `(n, width)` is true are real: `out` `(n, width, d)` holds every real position's output and
/// zero at padded positions (which are never attended to, as with torch's key padding mask).
/// The shape is in `layout` (`d = heads · head_dim`); `layout.parallel` splits the sequences
/// over the core's threads.
pub fn encoder(x: &[f32], real: &[bool], blocks: &[Block<'_>], layout: Layout, out: &mut [f32]) -> Result<()> {
    let Layout { width, heads, head_dim, parallel, .. } = layout;
    let d = heads * head_dim;
    if width == 0 || d == 0 {
        return Err(Error::invalid("encoder: width, heads and head_dim must be positive"));
    }
    let n = real.len() / width;
    if real.len() != n * width || x.len() != n * width * d || out.len() != n * width * d {
        return Err(Error::invalid(format!(
            "encoder: real has {} entries, x {} and out {}; with width {width} and d {d} they must be n·{width} and \
             n·{width}·{d}",
            real.len(),
            x.len(),
            out.len()
        )));
    }
    let ff = blocks.first().map_or(0, |b| b.ff1.bias.len());
    let prepared = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| Prepared::new(b, d, ff).map_err(|e| Error::invalid(format!("encoder: block {i}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let kernel = Kernel::detect();
    // One set of buffers per thread, reused by each of its tasks.
    let work = || Work::new(layout, ff, TASK);
    if parallel {
        out.par_chunks_mut(TASK * width * d)
            .zip(x.par_chunks(TASK * width * d))
            .zip(real.par_chunks(TASK * width))
            .for_each_init(work, |w, ((out, x), real)| w.run(x, real, &prepared, kernel, out));
    } else {
        let mut w = work();
        for ((out, x), real) in out.chunks_mut(TASK * width * d).zip(x.chunks(TASK * width * d)).zip(real.chunks(TASK * width)) {
            w.run(x, real, &prepared, kernel, out);
        }
    }
    Ok(())
}

/// A linear map laid out for the kernel: `wt` is the weight transposed, `(in, out)`.
struct Linear {
    wt: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    fn new(dense: &Dense<'_>, inputs: usize, outputs: usize, name: &str) -> std::result::Result<Self, String> {
        if dense.weight.len() != inputs * outputs || dense.bias.len() != outputs {
            return Err(format!(
                "{name} has a weight of {} and a bias of {} values; expected ({outputs}, {inputs}) and ({outputs},)",
                dense.weight.len(),
                dense.bias.len()
            ));
        }
        let mut wt = vec![0.0; inputs * outputs];
        for (o, row) in dense.weight.chunks_exact(inputs).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                wt[i * outputs + o] = w;
            }
        }
        Ok(Linear { wt, bias: dense.bias.to_vec(), inputs, outputs })
    }
}

struct Prepared<'a> {
    in_proj: Linear,
    out_proj: Linear,
    ff1: Linear,
    ff2: Linear,
    norm1: Norm<'a>,
    norm2: Norm<'a>,
}

impl<'a> Prepared<'a> {
    fn new(b: &Block<'a>, d: usize, ff: usize) -> std::result::Result<Self, String> {
        if ff == 0 {
            return Err("ff1 has no outputs (an empty feed-forward)".to_string());
        }
        for (name, norm) in [("norm1", &b.norm1), ("norm2", &b.norm2)] {
            if norm.weight.len() != d || norm.bias.len() != d {
                return Err(format!("{name} has {} weights and {} biases; expected {d}", norm.weight.len(), norm.bias.len()));
            }
        }
        Ok(Prepared {
            in_proj: Linear::new(&b.in_proj, d, 3 * d, "in_proj")?,
            out_proj: Linear::new(&b.out_proj, d, d, "out_proj")?,
            ff1: Linear::new(&b.ff1, d, ff, "ff1")?,
            ff2: Linear::new(&b.ff2, ff, d, "ff2")?,
            norm1: b.norm1,
            norm2: b.norm2,
        })
    }
}

/// One task's buffers, rows being the real positions of its sequences, gathered.
struct Work {
    layout: Layout,
    x: Vec<f32>,
    qkv: Vec<f32>,
    attended: Vec<f32>,
    sum: Vec<f32>,
    hidden: Vec<f32>,
    spans: Vec<(usize, usize)>, // per sequence: first row, rows
    all_real: Vec<bool>,
    attention: Scratch<F4>,
    scores: Vec<f32>, // the AVX-512 attention's, one query's: (keys, d)
}

impl Work {
    fn new(layout: Layout, ff: usize, sequences: usize) -> Self {
        let (w, d) = (layout.width, layout.heads * layout.head_dim);
        let rows = sequences * w;
        Work {
            layout,
            x: Vec::with_capacity(rows * d),
            qkv: vec![0.0; rows * 3 * d],
            attended: vec![0.0; rows * d],
            sum: vec![0.0; rows * d],
            hidden: vec![0.0; rows * ff],
            spans: Vec::with_capacity(sequences),
            all_real: vec![true; w],
            attention: Scratch::new(w, layout.heads.div_ceil(LANES), layout.head_dim),
            scores: vec![0.0; w.div_ceil(4) * 32],
        }
    }

    fn run(&mut self, x: &[f32], real: &[bool], blocks: &[Prepared<'_>], kernel: Kernel, out: &mut [f32]) {
        let Layout { width, heads, head_dim, .. } = self.layout;
        let d = heads * head_dim;
        self.x.clear();
        self.spans.clear();
        for (xs, rs) in x.chunks_exact(width * d).zip(real.chunks_exact(width)) {
            let first = self.x.len() / d;
            for (row, _) in xs.chunks_exact(d).zip(rs).filter(|(_, &r)| r) {
                self.x.extend_from_slice(row);
            }
            self.spans.push((first, self.x.len() / d - first));
        }
        let rows = self.x.len() / d;
        for b in blocks {
            kernel.linear(&self.x, &b.in_proj, &mut self.qkv[..rows * 3 * d], false);
            self.attend(kernel, rows);
            kernel.linear(&self.attended[..rows * d], &b.out_proj, &mut self.sum[..rows * d], false);
            add_norm(&mut self.x, &self.sum[..rows * d], &b.norm1);
            let hidden = &mut self.hidden[..rows * b.ff1.outputs];
            kernel.linear(&self.x, &b.ff1, hidden, true);
            kernel.linear(hidden, &b.ff2, &mut self.sum[..rows * d], false);
            add_norm(&mut self.x, &self.sum[..rows * d], &b.norm2);
        }
        for ((os, rs), &(first, _)) in out.chunks_exact_mut(width * d).zip(real.chunks_exact(width)).zip(&self.spans) {
            let mut row = first;
            for (o, &r) in os.chunks_exact_mut(d).zip(rs) {
                if r {
                    o.copy_from_slice(&self.x[row * d..(row + 1) * d]);
                    row += 1;
                } else {
                    o.fill(0.0);
                }
            }
        }
    }
}

impl Work {
    /// `attended` = each sequence's attention over its (gathered, all real) rows of `qkv`.
    fn attend(&mut self, kernel: Kernel, rows: usize) {
        let Layout { heads, head_dim, scale, .. } = self.layout;
        let d = heads * head_dim;
        let (qkv, attended) = (&self.qkv[..rows * 3 * d], &mut self.attended[..rows * d]);
        for &(first, len) in &self.spans {
            let (qkv, out) = (&qkv[first * 3 * d..(first + len) * 3 * d], &mut attended[first * d..(first + len) * d]);
            #[cfg(target_arch = "x86_64")]
            if kernel == Kernel::Avx512 && avx512::attends(heads, head_dim) {
                // SAFETY: Kernel::Avx512 is chosen only where the CPU has AVX-512F.
                unsafe { avx512::attention(qkv, d, scale, &mut self.scores, out) };
                continue;
            }
            let _ = kernel;
            self.attention.sequence(qkv, &self.all_real[..len], heads, head_dim, scale, out);
        }
    }
}

/// `x = norm(x + y)` row by row, as torch's LayerNorm: the mean, then the biased variance of
/// the deviations, both summed in f32 over 8 lanes (a sum element by element waits on each
/// addition in turn, and was as slow as the feed-forward's products).
fn add_norm(x: &mut [f32], y: &[f32], norm: &Norm<'_>) {
    let d = norm.weight.len();
    for (xr, yr) in x.chunks_exact_mut(d).zip(y.chunks_exact(d)) {
        for (a, &b) in xr.iter_mut().zip(yr) {
            *a += b;
        }
        let mean = lane_sum(xr, |a| a) / d as f32;
        let var = lane_sum(xr, |a| (a - mean) * (a - mean)) / d as f32;
        let inv = 1.0 / (var + norm.eps).sqrt();
        for ((a, &w), &b) in xr.iter_mut().zip(norm.weight).zip(norm.bias) {
            *a = (*a - mean) * inv * w + b;
        }
    }
}

/// `Σ f(x)` over 8 independent lanes, then across them as a tree.
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut l = [0.0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in l.iter_mut().zip(c) {
            *l += f(v);
        }
    }
    for (l, &v) in l.iter_mut().zip(chunks.remainder()) {
        *l += f(v);
    }
    let h = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// The matrix-product kernel: AVX-512 where the CPU has it, plain loops elsewhere.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Kernel::Avx512;
        }
        Kernel::Plain
    }

    /// `out = x · wt + bias` (then ReLU when `relu`), for every row of `x` (`inputs` wide).
    fn linear(self, x: &[f32], l: &Linear, out: &mut [f32], relu: bool) {
        debug_assert_eq!(x.len() / l.inputs * l.outputs, out.len());
        match self {
            Kernel::Plain => linear_plain(x, l, out, relu),
            // SAFETY: `detect` chose this kernel only where the CPU has AVX-512F.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { avx512::linear(x, l, out, relu) },
        }
    }
}

fn linear_plain(x: &[f32], l: &Linear, out: &mut [f32], relu: bool) {
    let m = l.outputs;
    for (xr, or) in x.chunks_exact(l.inputs).zip(out.chunks_exact_mut(m)) {
        or.copy_from_slice(&l.bias);
        for (&v, w) in xr.iter().zip(l.wt.chunks_exact(m)) {
            for (o, &w) in or.iter_mut().zip(w) {
                *o += v * w;
            }
        }
        if relu {
            for o in or.iter_mut() {
                *o = o.max(0.0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! A register-blocked product: `R` rows × `C` vectors of 16 outputs held in `R·C` of the 32
    //! registers, each step over the inputs loading `C` weight vectors and broadcasting `R`
    //! inputs for `R·C` fused multiply-adds. Outputs past a multiple of 16 are masked.
    use super::Linear;
    use std::arch::x86_64::*;

    /// Whether `attention` below takes this shape: heads of 4 dimensions (one head per 128-bit
    /// lane) filling whole vectors of 16.
    pub(super) fn attends(heads: usize, head_dim: usize) -> bool {
        head_dim == 4 && (heads * head_dim).is_multiple_of(16)
    }

    /// One sequence's attention, every position real: `qkv` (len, 3d) as the input projection
    /// writes it (queries, keys, values, each `[head][dim]`), `out` (len, d). Per vector of 16
    /// outputs (4 heads):
    ///
    /// * a query-key product is summed within each head's 4 lanes by two in-lane shuffles,
    ///   which leave the head's score in all 4 of its lanes;
    /// * four keys' scores are blended into one vector (key `j + k` in lane `k` of each head's
    ///   group), so the softmax's `exp` runs once per 4 keys instead of on 4 copies of each;
    /// * each key's weight is broadcast back over its head's lanes for the sum of values.
    ///
    /// `scores` holds one query's blended scores ((len / 4 rounded up) · 16 · 2).
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `attends(d / 4, 4)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn attention(qkv: &[f32], d: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        // Two vectors at a time where they pair up: their chains of dependent operations interleave.
        if (d / 16).is_multiple_of(2) {
            attention_on::<2>(qkv, d, scale, scores, out)
        } else {
            attention_on::<1>(qkv, d, scale, scores, out)
        }
    }

    /// `attention` on `V` vectors of outputs at a time (`V` dividing `d / 16`).
    #[target_feature(enable = "avx512f")]
    unsafe fn attention_on<const V: usize>(qkv: &[f32], d: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let len = qkv.len() / (3 * d);
        let groups = len.div_ceil(4);
        debug_assert!(scores.len() >= groups * 16 * V);
        let (qp, sp, op) = (qkv.as_ptr(), scores.as_mut_ptr(), out.as_mut_ptr());
        let scale = _mm512_set1_ps(scale);
        let load = |p: *const f32| _mm512_loadu_ps(p);
        let zero = _mm512_setzero_ps();
        for i in 0..len {
            for v0 in (0..d).step_by(16 * V) {
                let q: [__m512; V] = std::array::from_fn(|c| load(qp.add(i * 3 * d + v0 + 16 * c)));
                let mut max = [_mm512_set1_ps(f32::NEG_INFINITY); V];
                for g in 0..groups {
                    let mut blended = [_mm512_set1_ps(f32::NEG_INFINITY); V];
                    for k in 0..4.min(len - 4 * g) {
                        let key = qp.add((4 * g + k) * 3 * d + d + v0);
                        for c in 0..V {
                            let p = _mm512_mul_ps(q[c], load(key.add(16 * c)));
                            let p = _mm512_add_ps(p, _mm512_permute_ps::<0xB1>(p)); // lanes 1 0 3 2
                            let p = _mm512_add_ps(p, _mm512_permute_ps::<0x4E>(p)); // lanes 2 3 0 1
                            blended[c] = _mm512_mask_blend_ps(0x1111 << k, blended[c], _mm512_mul_ps(p, scale));
                        }
                    }
                    for c in 0..V {
                        _mm512_storeu_ps(sp.add(16 * (g * V + c)), blended[c]);
                        max[c] = _mm512_max_ps(max[c], blended[c]);
                    }
                }
                // every lane of a head's group: the head's maximum (the missing keys are -inf)
                for m in max.iter_mut() {
                    *m = _mm512_max_ps(*m, _mm512_permute_ps::<0xB1>(*m));
                    *m = _mm512_max_ps(*m, _mm512_permute_ps::<0x4E>(*m));
                }
                let mut total = [zero; V];
                let mut acc = [zero; V];
                for g in 0..groups {
                    let present = 4.min(len - 4 * g);
                    let lanes = [0x1111u16, 0x3333, 0x7777, 0xFFFF][present - 1];
                    let value = qp.add(4 * g * 3 * d + 2 * d + v0);
                    for c in 0..V {
                        let e = _mm512_maskz_mov_ps(lanes, exp(_mm512_sub_ps(load(sp.add(16 * (g * V + c))), max[c])));
                        total[c] = _mm512_add_ps(total[c], e);
                        let v = value.add(16 * c);
                        acc[c] = _mm512_fmadd_ps(_mm512_permute_ps::<0x00>(e), load(v), acc[c]);
                        if present > 1 {
                            acc[c] = _mm512_fmadd_ps(_mm512_permute_ps::<0x55>(e), load(v.add(3 * d)), acc[c]);
                        }
                        if present > 2 {
                            acc[c] = _mm512_fmadd_ps(_mm512_permute_ps::<0xAA>(e), load(v.add(6 * d)), acc[c]);
                        }
                        if present > 3 {
                            acc[c] = _mm512_fmadd_ps(_mm512_permute_ps::<0xFF>(e), load(v.add(9 * d)), acc[c]);
                        }
                    }
                }
                for c in 0..V {
                    let t = _mm512_add_ps(total[c], _mm512_permute_ps::<0xB1>(total[c]));
                    let t = _mm512_add_ps(t, _mm512_permute_ps::<0x4E>(t));
                    _mm512_storeu_ps(op.add(i * d + v0 + 16 * c), _mm512_div_ps(acc[c], t));
                }
            }
        }
    }

    /// `e^x` per lane, as the attention module's (Cody–Waite reduction, Cephes' degree-5
    /// polynomial, within 2 ulp for x in [-87, 88], clamped outside), with `2^k` by `scalef`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp(x: __m512) -> __m512 {
        use crate::attention::{EXP_POLY, LN2_HI, LN2_LO, LOG2E};
        let v = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(v, _mm512_set1_ps(LOG2E)));
        let r = _mm512_sub_ps(_mm512_sub_ps(v, _mm512_mul_ps(k, _mm512_set1_ps(LN2_HI))), _mm512_mul_ps(k, _mm512_set1_ps(LN2_LO)));
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, k)
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn linear(x: &[f32], l: &Linear, out: &mut [f32], relu: bool) {
        let vectors = l.outputs.div_ceil(16);
        // As many rows as keep R·C ≤ 18 accumulators, with C dividing the vectors.
        match vectors {
            v if v % 4 == 0 => rows::<4, 4>(x, l, out, relu),
            v if v % 3 == 0 => rows::<6, 3>(x, l, out, relu),
            v if v % 2 == 0 => rows::<8, 2>(x, l, out, relu),
            _ => rows::<8, 1>(x, l, out, relu),
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const R: usize, const C: usize>(x: &[f32], l: &Linear, out: &mut [f32], relu: bool) {
        let (k, m) = (l.inputs, l.outputs);
        let n = x.len() / k;
        let mut r = 0;
        while r + R <= n {
            tile::<R, C>(x, l, out, r, relu);
            r += R;
        }
        while r < n {
            tile::<1, C>(x, l, out, r, relu);
            r += 1;
        }
        debug_assert_eq!(out.len(), n * m);
    }

    /// Rows `r..r + R`, every output.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const C: usize>(x: &[f32], l: &Linear, out: &mut [f32], r: usize, relu: bool) {
        let (k, m) = (l.inputs, l.outputs);
        let (xp, wp, bp, op) = (x.as_ptr(), l.wt.as_ptr(), l.bias.as_ptr(), out.as_mut_ptr());
        let mut col = 0;
        while col < m {
            let mut masks = [0 as __mmask16; C];
            for (c, mask) in masks.iter_mut().enumerate() {
                let start = col + 16 * c;
                let left = m.saturating_sub(start).min(16);
                *mask = if left == 16 { 0xFFFF } else { (1u16 << left) - 1 };
            }
            let mut acc = [[_mm512_setzero_ps(); C]; R];
            for c in 0..C {
                let b = _mm512_maskz_loadu_ps(masks[c], bp.add(col + 16 * c));
                for a in acc.iter_mut() {
                    a[c] = b;
                }
            }
            for i in 0..k {
                let mut w = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    w[c] = _mm512_maskz_loadu_ps(masks[c], wp.add(i * m + col + 16 * c));
                }
                for (rr, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_set1_ps(*xp.add((r + rr) * k + i));
                    for c in 0..C {
                        a[c] = _mm512_fmadd_ps(v, w[c], a[c]);
                    }
                }
            }
            for (rr, a) in acc.iter().enumerate() {
                for c in 0..C {
                    let v = if relu { _mm512_max_ps(a[c], _mm512_setzero_ps()) } else { a[c] };
                    _mm512_mask_storeu_ps(op.add((r + rr) * m + col + 16 * c), masks[c], v);
                }
            }
            col += 16 * C;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rng: &mut crate::rng::Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| ((rng.next_u64() % 20001) as f32 / 10000.0 - 1.0) * scale).collect()
    }

    /// A block's parameters, owned.
    struct Params {
        v: Vec<Vec<f32>>,
    }

    impl Params {
        fn new(rng: &mut crate::rng::Rng, d: usize, ff: usize) -> Self {
            let s = 1.0 / (d as f32).sqrt();
            let sizes = [(3 * d * d, s), (3 * d, 0.1), (d * d, s), (d, 0.1), (ff * d, s), (ff, 0.1), (d * ff, s), (d, 0.1)];
            let mut v: Vec<Vec<f32>> = sizes.iter().map(|&(n, s)| random(rng, n, s)).collect();
            v.push(random(rng, d, 0.5).iter().map(|w| 1.0 + w).collect());
            v.push(random(rng, d, 0.2));
            v.push(random(rng, d, 0.5).iter().map(|w| 1.0 + w).collect());
            v.push(random(rng, d, 0.2));
            Params { v }
        }

        fn block(&self) -> Block<'_> {
            let v = &self.v;
            let dense = |i: usize| Dense { weight: &v[i], bias: &v[i + 1] };
            Block {
                in_proj: dense(0),
                out_proj: dense(2),
                ff1: dense(4),
                ff2: dense(6),
                norm1: Norm { weight: &v[8], bias: &v[9], eps: 1e-5 },
                norm2: Norm { weight: &v[10], bias: &v[11], eps: 1e-5 },
            }
        }
    }

    /// The blocks in f64 on one sequence's real positions, written out plainly: the reference.
    fn reference(x: &[f32], real: &[bool], blocks: &[Block<'_>], heads: usize, dh: usize) -> Vec<f64> {
        let d = heads * dh;
        let idx: Vec<usize> = (0..real.len()).filter(|&i| real[i]).collect();
        let mut h: Vec<Vec<f64>> = idx.iter().map(|&i| x[i * d..(i + 1) * d].iter().map(|&v| v as f64).collect()).collect();
        let lin = |x: &[f64], l: &Dense<'_>| -> Vec<f64> {
            let k = x.len();
            (0..l.bias.len())
                .map(|o| l.bias[o] as f64 + (0..k).map(|i| l.weight[o * k + i] as f64 * x[i]).sum::<f64>())
                .collect()
        };
        let norm = |x: Vec<f64>, n: &Norm<'_>| -> Vec<f64> {
            let mean = x.iter().sum::<f64>() / d as f64;
            let var = x.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / d as f64;
            x.iter().enumerate().map(|(t, a)| (a - mean) / (var + n.eps as f64).sqrt() * n.weight[t] as f64 + n.bias[t] as f64).collect()
        };
        for b in blocks {
            let qkv: Vec<Vec<f64>> = h.iter().map(|r| lin(r, &b.in_proj)).collect();
            let mut att = vec![vec![0.0; d]; h.len()];
            for (i, a) in att.iter_mut().enumerate() {
                for hd in 0..heads {
                    let dot = |j: usize| (0..dh).map(|t| qkv[i][hd * dh + t] * qkv[j][d + hd * dh + t]).sum::<f64>() / (dh as f64).sqrt();
                    let s: Vec<f64> = (0..h.len()).map(dot).collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = s.iter().map(|v| (v - max).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        for t in 0..dh {
                            a[hd * dh + t] += (sj - max).exp() / total * qkv[j][2 * d + hd * dh + t];
                        }
                    }
                }
            }
            h = h
                .iter()
                .zip(&att)
                .map(|(x, a)| {
                    let o = lin(a, &b.out_proj);
                    let x1 = norm(x.iter().zip(&o).map(|(p, q)| p + q).collect(), &b.norm1);
                    let hid: Vec<f64> = lin(&x1, &b.ff1).into_iter().map(|v| v.max(0.0)).collect();
                    let y = lin(&hid, &b.ff2);
                    norm(x1.iter().zip(&y).map(|(p, q)| p + q).collect(), &b.norm2)
                })
                .collect();
        }
        let mut out = vec![0.0; real.len() * d];
        for (r, &i) in idx.iter().enumerate() {
            out[i * d..(i + 1) * d].copy_from_slice(&h[r]);
        }
        out
    }

    #[test]
    fn linear_kernels_match_a_plain_product() {
        let mut rng = crate::rng::Rng::new(5);
        // outputs of 1, 3, 4 and 2 vectors of 16, and a multiple of none (masked tails)
        for &(k, m, n) in &[(32, 96, 37), (32, 32, 9), (32, 128, 5), (128, 32, 17), (12, 36, 7), (5, 3, 4), (16, 48, 1)] {
            let weight = random(&mut rng, m * k, 0.5);
            let bias = random(&mut rng, m, 0.5);
            let l = Linear::new(&Dense { weight: &weight, bias: &bias }, k, m, "test").unwrap();
            let x = random(&mut rng, n * k, 1.0);
            for relu in [false, true] {
                let want: Vec<f64> = (0..n * m)
                    .map(|p| {
                        let (r, o) = (p / m, p % m);
                        let v = bias[o] as f64 + (0..k).map(|i| x[r * k + i] as f64 * weight[o * k + i] as f64).sum::<f64>();
                        if relu { v.max(0.0) } else { v }
                    })
                    .collect();
                let mut kernels = vec![Kernel::Plain];
                kernels.push(Kernel::detect());
                for kernel in kernels {
                    let mut out = vec![f32::NAN; n * m];
                    kernel.linear(&x, &l, &mut out, relu);
                    for (p, (&a, &b)) in out.iter().zip(&want).enumerate() {
                        assert!((a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{kernel:?} k {k} m {m} at {p}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn both_attention_kernels_match_the_attention_module() {
        let mut rng = crate::rng::Rng::new(9);
        for &(len, heads) in &[(1, 4), (10, 4), (10, 12), (3, 8), (10, 8), (51, 8), (6, 16)] {
            let (dh, width) = (4, len);
            let d = heads * dh;
            let layout = Layout { width, heads, head_dim: dh, scale: 0.5, parallel: false };
            let mut work = Work::new(layout, 4, 1);
            work.spans = vec![(0, len)];
            work.qkv = random(&mut rng, len * 3 * d, 3.0);
            let mut want = vec![0.0; len * d];
            crate::attention::attention(&work.qkv, &vec![true; len], layout, &mut want).unwrap();
            for kernel in [Kernel::Plain, Kernel::detect()] {
                work.attended.fill(f32::NAN);
                work.attend(kernel, len);
                for (p, (&a, &b)) in work.attended.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{kernel:?} len {len} heads {heads} at {p}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn hand_computed_norm() {
        // x + y = [1, 2, 3, 6]: mean 3, variance (4 + 1 + 0 + 9) / 4 = 3.5
        let mut x = vec![0.0, 1.0, 1.0, 3.0];
        let y = [1.0, 1.0, 2.0, 3.0];
        let (w, b) = ([1.0, 2.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.0]);
        add_norm(&mut x, &y, &Norm { weight: &w, bias: &b, eps: 0.0 });
        let s = 3.5f32.sqrt();
        let want = [-2.0 / s, -2.0 / s, 0.5, 3.0 / s]; // the second with weight 2
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn matches_f64_reference_whatever_the_padding_or_the_threads() {
        let mut rng = crate::rng::Rng::new(3);
        for &(width, heads, dh, ff, blocks) in &[(10, 8, 4, 128, 4), (1, 2, 2, 8, 1), (7, 3, 4, 36, 2), (51, 8, 4, 128, 2)] {
            let d = heads * dh;
            let params: Vec<Params> = (0..blocks).map(|_| Params::new(&mut rng, d, ff)).collect();
            let bl: Vec<Block<'_>> = params.iter().map(Params::block).collect();
            let n = 70; // more than two tasks
            let x = random(&mut rng, n * width * d, 1.0);
            // sequences with 0 to width real positions, some not a prefix (a candidate at the end)
            let real: Vec<bool> =
                (0..n * width).map(|p| p % width == width - 1 && p / width % 5 != 0 || (p % width) < (p / width) % (width + 1)).collect();
            let layout = Layout { width, heads, head_dim: dh, scale: (dh as f32).powf(-0.5), parallel: true };
            let mut out = vec![f32::NAN; n * width * d];
            encoder(&x, &real, &bl, layout, &mut out).unwrap();
            let mut serial = vec![f32::NAN; n * width * d];
            encoder(&x, &real, &bl, Layout { parallel: false, ..layout }, &mut serial).unwrap();
            assert_eq!(out, serial, "threads change nothing");
            for s in 0..n {
                let span = s * width * d..(s + 1) * width * d;
                let want = reference(&x[span.clone()], &real[s * width..(s + 1) * width], &bl, heads, dh);
                for (p, (&a, &b)) in out[span.clone()].iter().zip(&want).enumerate() {
                    assert!((a as f64 - b).abs() < 2e-4, "width {width} sequence {s} at {p}: {a} vs {b}");
                }
                // alone, and padded wider with garbage at padded positions: the same bits
                let mut wide_x = x[span.clone()].to_vec();
                let mut wide_real = real[s * width..(s + 1) * width].to_vec();
                wide_x.extend(random(&mut rng, 3 * d, 9.0));
                wide_real.extend([false; 3]);
                let mut alone = vec![0.0; (width + 3) * d];
                encoder(&wide_x, &wide_real, &bl, Layout { width: width + 3, ..layout }, &mut alone).unwrap();
                assert_eq!(&alone[..width * d], &out[span]);
                assert!(alone[width * d..].iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let mut rng = crate::rng::Rng::new(1);
        let p = Params::new(&mut rng, 8, 16);
        let b = p.block();
        let layout = Layout { width: 2, heads: 2, head_dim: 4, scale: 0.5, parallel: false };
        let mut out = vec![0.0; 16];
        assert!(encoder(&[0.0; 15], &[true; 2], &[b], layout, &mut out).is_err());
        let short = Block { ff2: Dense { weight: &p.v[6][..100], bias: &p.v[7] }, ..b };
        let e = encoder(&[0.0; 16], &[true; 2], &[short], layout, &mut out).unwrap_err().to_string();
        assert!(e.contains("block 0") && e.contains("ff2"), "{e}");
        let empty = Block { ff1: Dense { weight: &[], bias: &[] }, ff2: Dense { weight: &[], bias: &p.v[7] }, ..b };
        let e = encoder(&[0.0; 16], &[true; 2], &[empty], layout, &mut out).unwrap_err().to_string();
        assert!(e.contains("empty feed-forward"), "{e}");
    }
}

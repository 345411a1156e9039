//! Multi-head self-attention of many short padded sequences, forward only: the part of ACMR's
//! evaluation that torch runs worst on the CPU.
//!
//! ACMR scores every (user, candidate) pair as a sequence of about ten positions with 8 heads of
//! 4 dimensions. Torch runs that as thousands of 10 × 4 matrix products per call, plus the copies
//! that lay the heads out for them and a softmax over a short axis: 70% of an evaluation forward,
//! against 5% of its FLOPs. Here one pass per sequence reads queries, keys and values where the
//! input projection wrote them and writes each head's output where the output projection reads it.
//!
//! Padding follows torch's key padding mask: a position that is not real is never attended to.
//! Its own output (a padded query) is not computed and is left zero: callers read only real
//! positions (ACMR masks them out of the mean and out of every later attention).

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Sequences per parallel task (each task allocates its scratch once).
const TASK: usize = 64;

/// `out[s, i, h, :]` = softmax over the real keys `j` of `scale · q[s,i,h,:]·k[s,j,h,:]`, applied
/// to `v[s,j,h,:]`, for every real position `i` of every sequence `s`; zero where `i` is padding.
///
/// `qkv` is `(n, width, 3, heads, head_dim)` row-major (a linear layer's `(n, width, 3·d)`
/// output), `real` is `(n, width)`, `out` is `(n, width, heads · head_dim)`, with the shape in
/// `layout`. A sequence with no real position gets zeros. Every element of `out` is written,
/// whatever it held. Each sequence is computed alone, so a result does not depend on the thread
/// count or on which other sequences share the call. Callers that already run several calls at
/// once (ACMR's evaluation pieces on Python threads) set `layout.parallel` false, so the pool's
/// threads do not compete with theirs.
pub fn attention(qkv: &[f32], real: &[bool], layout: Layout, out: &mut [f32]) -> Result<()> {
    attention_on::<F4>(qkv, real, layout, out)
}

/// What one call computes: sequences of `width` positions, `heads` heads of `head_dim`
/// dimensions, scores scaled by `scale`; `parallel` splits the sequences over the core's threads.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub width: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub parallel: bool,
}

/// `attention` on lanes `L` (the platform's, or in tests the plain ones to compare).
fn attention_on<L: Lanes>(qkv: &[f32], real: &[bool], layout: Layout, out: &mut [f32]) -> Result<()> {
    let Layout { width, heads, head_dim, scale, parallel } = layout;
    let d = heads * head_dim;
    if width == 0 || d == 0 {
        return Err(Error::invalid("attention: width, heads and head_dim must be positive"));
    }
    let n = real.len() / width;
    if real.len() != n * width || qkv.len() != n * width * 3 * d || out.len() != n * width * d {
        return Err(Error::invalid(format!(
            "attention: real has {} entries, qkv {} and out {}; with width {width} and {heads} heads of {head_dim} \
             they must be n·{width}, n·{width}·{} and n·{width}·{d}",
            real.len(),
            qkv.len(),
            out.len(),
            3 * d
        )));
    }
    let groups = heads.div_ceil(LANES);
    let task = |out: &mut [f32], qkv: &[f32], real: &[bool]| {
        let mut scratch = Scratch::<L>::new(width, groups, head_dim);
        for ((o, x), r) in out.chunks_mut(width * d).zip(qkv.chunks(width * 3 * d)).zip(real.chunks(width)) {
            scratch.sequence(x, r, heads, head_dim, scale, o);
        }
    };
    if parallel {
        out.par_chunks_mut(TASK * width * d)
            .zip(qkv.par_chunks(TASK * width * 3 * d))
            .zip(real.par_chunks(TASK * width))
            .for_each(|((out, qkv), real)| task(out, qkv, real));
    } else {
        task(out, qkv, real);
    }
    Ok(())
}

/// Heads per vector: the work is laid out head-innermost, `[position][dim][head]`, and runs on
/// all heads of a group at once (with ACMR's heads of 4 dimensions a per-head loop is 4-long
/// dot products, all overhead). Heads are padded with zeros to a multiple of `LANES`.
pub(crate) const LANES: usize = 4;

/// Per-task buffers, each of vectors `L` of `LANES` heads.
pub(crate) struct Scratch<L> {
    index: Vec<usize>,
    keys: Vec<L>,   // [key][dim][group]
    values: Vec<L>, // [key][dim][group]
    query: Vec<L>,  // [dim][group]
    scores: Vec<L>, // [key][group]
    acc: Vec<L>,    // [dim][group]
    max: Vec<L>,    // [group]
    total: Vec<L>,  // [group]
    groups: usize,
}

impl<L: Lanes> Scratch<L> {
    pub(crate) fn new(width: usize, groups: usize, dh: usize) -> Self {
        let zero = L::splat(0.0);
        Scratch {
            index: Vec::with_capacity(width),
            keys: vec![zero; width * dh * groups],
            values: vec![zero; width * dh * groups],
            query: vec![zero; dh * groups],
            scores: vec![zero; width * groups],
            acc: vec![zero; dh * groups],
            max: vec![zero; groups],
            total: vec![zero; groups],
            groups,
        }
    }

    pub(crate) fn sequence(&mut self, qkv: &[f32], real: &[bool], heads: usize, dh: usize, scale: f32, out: &mut [f32]) {
        let (d, g) = (heads * dh, self.groups);
        self.index.clear();
        for (j, (&r, o)) in real.iter().zip(out.chunks_exact_mut(d)).enumerate() {
            if r {
                self.index.push(j);
            } else {
                o.fill(0.0); // a padded query: zero (real rows are written below, every element)
            }
        }
        let n = self.index.len();
        if n == 0 {
            return;
        }
        let row = dh * g; // one position's [dim][group]
        for (jj, &j) in self.index.iter().enumerate() {
            let x = &qkv[j * 3 * d..(j + 1) * 3 * d];
            gather(&x[d..2 * d], &mut self.keys[jj * row..(jj + 1) * row], heads, dh);
            gather(&x[2 * d..], &mut self.values[jj * row..(jj + 1) * row], heads, dh);
        }
        let (keys, values) = (&self.keys[..n * row], &self.values[..n * row]);
        let scores = &mut self.scores[..n * g];
        let scale = L::splat(scale);
        for &i in &self.index {
            gather(&qkv[i * 3 * d..i * 3 * d + d], &mut self.query, heads, dh);
            // scores[j] = scale · Σ_t q[t] k[j][t], per head; the running maximum per head
            self.max.fill(L::splat(f32::NEG_INFINITY));
            for (s, k) in scores.chunks_exact_mut(g).zip(keys.chunks_exact(row)) {
                for (c, (s, m)) in s.iter_mut().zip(self.max.iter_mut()).enumerate() {
                    let mut acc = L::splat(0.0);
                    for t in 0..dh {
                        acc = acc.add(self.query[t * g + c].mul(k[t * g + c]));
                    }
                    *s = acc.mul(scale);
                    *m = m.max(*s);
                }
            }
            self.total.fill(L::splat(0.0));
            for s in scores.chunks_exact_mut(g) {
                for ((s, &m), t) in s.iter_mut().zip(&self.max).zip(self.total.iter_mut()) {
                    *s = s.sub(m).exp();
                    *t = t.add(*s);
                }
            }
            // acc[t] = Σ_j (e_j · (1 / total)) v[j][t], per head (torch's softmax also
            // multiplies by the reciprocal of the sum)
            for t in self.total.iter_mut() {
                *t = L::splat(1.0).div(*t);
            }
            self.acc.fill(L::splat(0.0));
            for (s, v) in scores.chunks_exact(g).zip(values.chunks_exact(row)) {
                for (c, (&e, &inverse)) in s.iter().zip(&self.total).enumerate() {
                    let w = e.mul(inverse);
                    for t in 0..dh {
                        self.acc[t * g + c] = self.acc[t * g + c].add(w.mul(v[t * g + c]));
                    }
                }
            }
            let o = &mut out[i * d..(i + 1) * d];
            for (t, a) in self.acc.chunks_exact(g).enumerate() {
                for (c, a) in a.iter().enumerate() {
                    let lanes = a.to_array();
                    for (l, &x) in lanes.iter().enumerate().take(heads.saturating_sub(c * LANES)) {
                        o[(c * LANES + l) * dh + t] = x;
                    }
                }
            }
        }
    }
}

/// One position's `[head][dim]` row as `[dim][group]` vectors, heads past `heads` zero.
fn gather<L: Lanes>(from: &[f32], to: &mut [L], heads: usize, dh: usize) {
    let g = heads.div_ceil(LANES);
    for t in 0..dh {
        for c in 0..g {
            let mut lanes = [0.0f32; LANES];
            for (l, x) in lanes.iter_mut().enumerate() {
                let h = c * LANES + l;
                if h < heads {
                    *x = from[h * dh + t];
                }
            }
            to[t * g + c] = L::from_array(lanes);
        }
    }
}

pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
// Adding 1.5 · 2^23 rounds to an integer (to nearest, for |v| < 2^22) with no conversion
// instruction; the integer is then the low bits of the sum.
const ROUND: f32 = 12_582_912.0;
pub(crate) const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];

/// Four f32 lanes and the operations the kernel needs. `Sse` (every x86-64 CPU has SSE2) and
/// `Plain` (arrays, elsewhere) do the same IEEE operations in the same order, so a result does
/// not depend on the platform (a test compares them bit for bit). The compiler did not vectorise
/// plain loops over heads by itself.
pub(crate) trait Lanes: Copy {
    fn splat(x: f32) -> Self;
    fn from_array(a: [f32; LANES]) -> Self;
    fn to_array(self) -> [f32; LANES];
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn div(self, o: Self) -> Self;
    /// SSE's `maxps`: `o` when either is NaN.
    fn max(self, o: Self) -> Self;
    /// SSE's `minps`: `o` when either is NaN.
    fn min(self, o: Self) -> Self;
    /// `2^k` from `t = k + ROUND` (see `exp`): the integer is in t's low mantissa bits.
    fn pow2_of_rounded(self) -> Self;

    /// `e^x` per lane. Cody–Waite reduction `x = k ln 2 + r`, `|r| ≤ ln 2 / 2`, and Cephes'
    /// degree-5 polynomial for `e^r`: within 2 ulp of the exact value for `x` in [-87, 88];
    /// outside it the input is clamped (a softmax after subtracting its maximum never goes
    /// below -87 short of weights under 1e-38). Libm's `expf` is a call per element, the slowest
    /// part of a softmax here.
    #[inline(always)]
    fn exp(self) -> Self {
        let v = self.max(Self::splat(-87.0)).min(Self::splat(88.0));
        let t = v.mul(Self::splat(LOG2E)).add(Self::splat(ROUND));
        let k = t.sub(Self::splat(ROUND));
        let r = v.sub(k.mul(Self::splat(LN2_HI))).sub(k.mul(Self::splat(LN2_LO)));
        let mut p = Self::splat(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = p.mul(r).add(Self::splat(c));
        }
        let e = p.mul(r).mul(r).add(r).add(Self::splat(1.0));
        e.mul(t.pow2_of_rounded())
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) type F4 = Sse;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) type F4 = Plain;

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Sse(std::arch::x86_64::__m128);

/// The lane-wise binary operations of `Sse`, each one SSE instruction.
#[cfg(target_arch = "x86_64")]
macro_rules! lane_ops {
    ($($name:ident $intrinsic:ident),*) => {$(
        #[inline(always)]
        fn $name(self, o: Self) -> Self {
            unsafe { Sse(std::arch::x86_64::$intrinsic(self.0, o.0)) }
        }
    )*};
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)] // SSE2 intrinsics are safe to call from Rust 1.87 on; unsafe before
impl Lanes for Sse {
    #[inline(always)]
    fn splat(x: f32) -> Self {
        unsafe { Sse(std::arch::x86_64::_mm_set1_ps(x)) }
    }
    #[inline(always)]
    fn from_array(a: [f32; LANES]) -> Self {
        unsafe { Sse(std::arch::x86_64::_mm_loadu_ps(a.as_ptr())) }
    }
    #[inline(always)]
    fn to_array(self) -> [f32; LANES] {
        let mut a = [0.0; LANES];
        unsafe { std::arch::x86_64::_mm_storeu_ps(a.as_mut_ptr(), self.0) };
        a
    }
    lane_ops!(add _mm_add_ps, sub _mm_sub_ps, mul _mm_mul_ps, div _mm_div_ps, max _mm_max_ps, min _mm_min_ps);
    #[inline(always)]
    fn pow2_of_rounded(self) -> Self {
        use std::arch::x86_64::*;
        unsafe {
            let k = _mm_sub_epi32(_mm_castps_si128(self.0), _mm_set1_epi32(ROUND.to_bits() as i32));
            Sse(_mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(k, _mm_set1_epi32(127)), 23)))
        }
    }
}

#[cfg(any(test, not(target_arch = "x86_64")))]
#[derive(Clone, Copy)]
pub(crate) struct Plain([f32; LANES]);

#[cfg(any(test, not(target_arch = "x86_64")))]
impl Plain {
    fn zip(self, o: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        Plain(std::array::from_fn(|l| f(self.0[l], o.0[l])))
    }
}

#[cfg(any(test, not(target_arch = "x86_64")))]
impl Lanes for Plain {
    fn splat(x: f32) -> Self {
        Plain([x; LANES])
    }
    fn from_array(a: [f32; LANES]) -> Self {
        Plain(a)
    }
    fn to_array(self) -> [f32; LANES] {
        self.0
    }
    fn add(self, o: Self) -> Self {
        self.zip(o, |a, b| a + b)
    }
    fn sub(self, o: Self) -> Self {
        self.zip(o, |a, b| a - b)
    }
    fn mul(self, o: Self) -> Self {
        self.zip(o, |a, b| a * b)
    }
    fn div(self, o: Self) -> Self {
        self.zip(o, |a, b| a / b)
    }
    fn max(self, o: Self) -> Self {
        self.zip(o, |a, b| if a > b { a } else { b })
    }
    fn min(self, o: Self) -> Self {
        self.zip(o, |a, b| if a < b { a } else { b })
    }
    fn pow2_of_rounded(self) -> Self {
        Plain(self.0.map(|t| f32::from_bits((t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lay(width: usize, heads: usize, head_dim: usize, scale: f32, parallel: bool) -> Layout {
        Layout { width, heads, head_dim, scale, parallel }
    }

    /// Plain attention for one sequence and head, in f64: the reference.
    fn reference(qkv: &[f32], real: &[bool], heads: usize, dh: usize, scale: f64) -> Vec<f64> {
        let width = real.len();
        let d = heads * dh;
        let mut out = vec![0.0; width * d];
        for h in 0..heads {
            for i in (0..width).filter(|&i| real[i]) {
                let q = |t: usize| qkv[i * 3 * d + h * dh + t] as f64;
                let scores: Vec<(usize, f64)> = (0..width)
                    .filter(|&j| real[j])
                    .map(|j| (j, scale * (0..dh).map(|t| q(t) * qkv[j * 3 * d + d + h * dh + t] as f64).sum::<f64>()))
                    .collect();
                let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
                for &(j, s) in &scores {
                    let w = (s - max).exp() / total;
                    for t in 0..dh {
                        out[i * d + h * dh + t] += w * qkv[j * 3 * d + 2 * d + h * dh + t] as f64;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn hand_computed_two_keys() {
        // One head of one dimension; positions 0 and 2 real, 1 padding.
        // q0 = 1, k = [0, _, ln 3], v = [2, 100, 6], scale 1: weights over (0, 2) are 1/4, 3/4.
        let ln3 = 3f32.ln();
        #[rustfmt::skip]
        let qkv = [1.0, 0.0, 2.0,   5.0, 7.0, 100.0,   1.0, ln3, 6.0];
        let real = [true, false, true];
        let mut out = [f32::NAN; 3];
        attention(&qkv, &real, lay(3, 1, 1, 1.0, true), &mut out).unwrap();
        assert!((out[0] - (0.25 * 2.0 + 0.75 * 6.0)).abs() < 1e-6, "{out:?}");
        assert_eq!(out[1], 0.0, "a padded query's row is zero");
        // q2 = 1 too: the same weights.
        assert!((out[2] - 5.0).abs() < 1e-6);
    }

    #[test]
    fn matches_f64_reference_and_ignores_padded_values() {
        let mut rng = crate::rng::Rng::new(11);
        for &(width, heads, dh) in &[(1, 1, 1), (5, 2, 4), (11, 8, 4), (51, 8, 4), (7, 3, 5)] {
            let n = 6;
            let d = heads * dh;
            let mut qkv: Vec<f32> = (0..n * width * 3 * d).map(|_| (rng.next_u64() % 2001) as f32 / 250.0 - 4.0).collect();
            let real: Vec<bool> = (0..n * width).map(|p| p % width == width - 1 || (p % width) < (p / width) % (width + 1)).collect();
            let mut out = vec![0.0; n * width * d];
            attention(&qkv, &real, lay(width, heads, dh, 0.5, true), &mut out).unwrap();
            for s in 0..n {
                let want = reference(&qkv[s * width * 3 * d..][..width * 3 * d], &real[s * width..][..width], heads, dh, 0.5);
                for (a, b) in out[s * width * d..][..width * d].iter().zip(&want) {
                    assert!((*a as f64 - b).abs() < 2e-5 * (1.0 + b.abs()), "{width} {heads} {dh}: {a} vs {b}");
                }
            }
            // Changing what padded positions hold changes nothing, and every element of `out` is
            // written whatever it held (here NaN).
            for p in (0..n * width).filter(|&p| !real[p]) {
                for x in &mut qkv[p * 3 * d..(p + 1) * 3 * d] {
                    *x = 1e6;
                }
            }
            let mut again = vec![f32::NAN; n * width * d];
            attention(&qkv, &real, lay(width, heads, dh, 0.5, false), &mut again).unwrap();
            assert_eq!(out, again);
        }
    }

    #[test]
    fn no_real_position_gives_zeros_and_bad_lengths_are_refused() {
        let mut out = vec![1.0; 2 * 4];
        attention(&[3.0; 2 * 12], &[false, false], lay(2, 2, 2, 1.0, true), &mut out).unwrap();
        assert!(out.iter().all(|&x| x == 0.0));
        assert!(attention(&[0.0; 11], &[true], lay(1, 2, 2, 1.0, true), &mut [0.0; 4]).is_err());
        assert!(attention(&[0.0; 12], &[true], lay(1, 2, 2, 1.0, true), &mut [0.0; 3]).is_err());
        assert!(attention(&[], &[], lay(0, 1, 1, 1.0, true), &mut []).is_err());
    }

    #[test]
    fn the_plain_lanes_give_the_vector_lanes_bits() {
        // What a platform without SSE2 computes, against what x86-64 computes.
        let mut rng = crate::rng::Rng::new(5);
        let (n, width, heads, dh) = (9, 13, 8, 4);
        let qkv: Vec<f32> = (0..n * width * 3 * heads * dh).map(|_| (rng.next_u64() % 4001) as f32 / 400.0 - 5.0).collect();
        let real: Vec<bool> = (0..n * width).map(|p| p % width == width - 1 || !rng.next_u64().is_multiple_of(3)).collect();
        let (mut a, mut b) = (vec![0.0; n * width * heads * dh], vec![0.0; n * width * heads * dh]);
        attention_on::<F4>(&qkv, &real, lay(width, heads, dh, 0.5, true), &mut a).unwrap();
        attention_on::<Plain>(&qkv, &real, lay(width, heads, dh, 0.5, false), &mut b).unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        let xs: Vec<f32> = (0..4000).map(|i| -90.0 + i as f32 * 0.045).collect();
        for c in xs.chunks(LANES) {
            let c: [f32; LANES] = c.try_into().unwrap();
            let (e, p) = (F4::from_array(c).exp().to_array(), Plain::from_array(c).exp().to_array());
            assert_eq!(e.map(f32::to_bits), p.map(f32::to_bits));
        }
    }

    /// `e^x` for every element through the kernel's `exp`.
    fn exp_in_place(xs: &mut [f32]) {
        for chunk in xs.chunks_mut(LANES) {
            let mut lanes = [0.0f32; LANES];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let e = F4::from_array(lanes).exp().to_array();
            chunk.copy_from_slice(&e[..chunk.len()]);
        }
    }

    #[test]
    fn exp_within_two_ulp() {
        let xs: Vec<f32> = (0..200_001).map(|i| -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0).collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let exact = (x as f64).exp();
            let ulp = (exact as f32).abs() * f32::EPSILON;
            assert!(((y as f64) - exact).abs() <= 2.0 * ulp as f64, "exp({x}) = {y}, exact {exact}");
        }
        let mut edge = [0.0f32, -1e-30, -200.0, f32::NEG_INFINITY];
        exp_in_place(&mut edge);
        assert_eq!(edge[0], 1.0);
        assert_eq!(edge[1], 1.0);
        assert!(edge[2] > 0.0 && edge[2] < 2e-38 && edge[3] == edge[2]);
    }
}

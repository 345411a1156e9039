//! Ranked evaluation with one held-out positive per query (leave-one-out).
//!
//! Evaluation has two steps. [`standings`] reads each query's scores once, without sorting, and
//! counts the other candidates scoring above the positive and those tied with it (and, for the
//! `trec` policy, how many of the ties trec_eval's order puts first). [`metric_values`] turns
//! those counts into HR, NDCG, MRR, precision, MAP and AUC under a tie policy. Everything a
//! metric needs is in the counts, so the second step is cheap and any policy can be asked for
//! afterwards.
//!
//! Ties are explicit because they decide results: a model that scores every candidate alike
//! gets HR@10 = 1 if the positive wins ties, 0 if it loses them and 0.1 on average over random
//! tie order. Scores are compared in their own type (float32 ties stay ties); a NaN is an error.
//!
//! The same counting serves sampled evaluation (a row of 1 + n candidates per query) and full
//! ranking (a row of all items, with the user's training items excluded).

use crate::error::{Error, Result};
use crate::negatives::Csr;
use rayon::prelude::*;
use std::str::FromStr;

/// How a positive is ranked among candidates with exactly its score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TiePolicy {
    /// The positive comes after every tie (the default: a model gains nothing from ties).
    Pessimistic,
    /// The positive comes before every tie.
    Optimistic,
    /// The average of the metric over all orders of the ties, equally likely.
    Expected,
    /// trec_eval's order: score descending, then item id (as a string) descending. Needs keys.
    Trec,
}

impl FromStr for TiePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pessimistic" => Ok(TiePolicy::Pessimistic),
            "optimistic" => Ok(TiePolicy::Optimistic),
            "expected" => Ok(TiePolicy::Expected),
            "trec" => Ok(TiePolicy::Trec),
            _ => Err(Error::invalid(format!(
                "unknown tie policy {s:?} (expected pessimistic, optimistic, expected or trec)"
            ))),
        }
    }
}

/// Where a query's positive stands among its other candidates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// Other candidates scoring strictly above the positive.
    pub greater: u32,
    /// Other candidates scoring exactly as the positive.
    pub ties: u32,
    /// Of the ties, those that the trec order puts above the positive (0 without keys).
    pub trec_lost: u32,
    /// Other candidates counted (negatives, after exclusions).
    pub others: u32,
}

impl Standing {
    /// The 0-based rank of the positive under a deterministic policy (not `Expected`).
    pub fn rank(&self, policy: TiePolicy) -> u32 {
        match policy {
            TiePolicy::Pessimistic => self.greater + self.ties,
            TiePolicy::Optimistic => self.greater,
            TiePolicy::Trec => self.greater + self.trec_lost,
            // The mean rank, rounded down; metrics under `Expected` average exactly instead.
            TiePolicy::Expected => self.greater + self.ties / 2,
        }
    }
}

/// A score type compared as it is (no widening that could merge or split ties).
pub trait Score: Copy + PartialOrd + Send + Sync {
    fn is_nan(self) -> bool;
    fn nan() -> Self;
}

impl Score for f32 {
    #[inline]
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn nan() -> Self {
        f32::NAN
    }
}

impl Score for f64 {
    #[inline]
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn nan() -> Self {
        f64::NAN
    }
}

/// How rows of scores are laid out in one flat slice.
#[derive(Clone, Copy, Debug)]
pub enum Layout<'a> {
    /// A row-major matrix with `cols` columns.
    Dense { cols: usize },
    /// Row `i` is `offsets[i]..offsets[i + 1]` (rows + 1 offsets, starting at 0).
    Ragged { offsets: &'a [u64] },
}

impl Layout<'_> {
    fn rows(&self, len: usize) -> Result<usize> {
        match *self {
            Layout::Dense { cols } => {
                if cols == 0 {
                    return Err(Error::invalid(
                        "scores: a score matrix needs at least one column",
                    ));
                }
                if !len.is_multiple_of(cols) {
                    return Err(Error::invalid(format!(
                        "scores: {len} values do not fill rows of {cols}"
                    )));
                }
                Ok(len / cols)
            }
            Layout::Ragged { offsets } => {
                if offsets.is_empty() || offsets[0] != 0 || offsets.windows(2).any(|w| w[0] > w[1])
                {
                    return Err(Error::invalid(
                        "scores: offsets must start at 0 and not decrease",
                    ));
                }
                if *offsets.last().unwrap() as usize != len {
                    return Err(Error::invalid(format!(
                        "scores: offsets end at {} but there are {len} scores",
                        offsets.last().unwrap()
                    )));
                }
                Ok(offsets.len() - 1)
            }
        }
    }

    #[inline]
    fn range(&self, i: usize) -> (usize, usize) {
        match *self {
            Layout::Dense { cols } => (i * cols, (i + 1) * cols),
            Layout::Ragged { offsets } => (offsets[i] as usize, offsets[i + 1] as usize),
        }
    }
}

/// Keys that order tied candidates for the `trec` policy: a larger key ranks first. Build them
/// as each item id's position in ascending byte order of the id strings.
#[derive(Clone, Copy, Debug)]
pub enum TieKeys<'a> {
    None,
    /// One key per score (same layout as the scores), e.g. for stored candidate lists.
    PerScore(&'a [u32]),
    /// One key per column, shared by all rows (dense layout), e.g. for full ranking.
    PerColumn(&'a [u32]),
}

/// Counts, for every row, the candidates above and tied with the positive.
///
/// * `positive[i]`: the positive's index within row `i`;
/// * `exclude`: per row, column indices left out of the ranking (e.g. training items in full
///   ranking); duplicates, out-of-range indices and the positive itself are ignored;
/// * `keys`: tie-break keys for [`TiePolicy::Trec`], or `TieKeys::None`.
pub fn standings<T: Score>(
    scores: &[T],
    layout: Layout<'_>,
    positive: &[u32],
    exclude: Option<Csr<'_>>,
    keys: TieKeys<'_>,
) -> Result<Vec<Standing>> {
    let rows = layout.rows(scores.len())?;
    if positive.len() != rows {
        return Err(Error::invalid(format!(
            "scores have {rows} rows but {} positive indices were given",
            positive.len()
        )));
    }
    if let Some(ex) = exclude {
        if ex.rows() != rows {
            return Err(Error::invalid(format!(
                "scores have {rows} rows but the exclusions have {}",
                ex.rows()
            )));
        }
    }
    match keys {
        TieKeys::PerScore(k) if k.len() != scores.len() => {
            return Err(Error::invalid(format!(
                "tie keys: {} keys for {} scores",
                k.len(),
                scores.len()
            )))
        }
        TieKeys::PerColumn(k) => match layout {
            Layout::Dense { cols } if k.len() == cols => {}
            Layout::Dense { cols } => {
                return Err(Error::invalid(format!(
                    "tie keys: {} keys for {cols} columns",
                    k.len()
                )))
            }
            Layout::Ragged { .. } => {
                return Err(Error::invalid(
                    "tie keys per column need a dense score matrix",
                ))
            }
        },
        _ => {}
    }
    let mut out = filled(Standing::default(), rows);
    let stand = |excluded: &mut Vec<usize>, (i, slot): (usize, &mut Standing)| -> Result<()> {
        let (start, end) = layout.range(i);
        let row = &scores[start..end];
        let pos = positive[i] as usize;
        if pos >= row.len() {
            return Err(Error::invalid(format!(
                "row {i}: positive index {pos} is outside its {} candidates",
                row.len()
            )));
        }
        excluded.clear();
        if let Some(ex) = exclude {
            excluded.extend(
                ex.row(i)
                    .iter()
                    .map(|&c| c as usize)
                    .filter(|&c| c < row.len() && c != pos),
            );
            excluded.sort_unstable();
            excluded.dedup();
        }
        let key = |c: usize| -> Option<u32> {
            match keys {
                TieKeys::None => None,
                TieKeys::PerScore(k) => Some(k[start + c]),
                TieKeys::PerColumn(k) => Some(k[c]),
            }
        };
        *slot = stand_row(row, pos, excluded, key)
            .map_err(|what| Error::invalid(format!("row {i}: {what}")))?;
        Ok(())
    };
    if parallel(scores.len()) {
        out.par_iter_mut()
            .enumerate()
            .with_min_len(256)
            .try_for_each_init(Vec::new, stand)?;
    } else {
        let mut excluded = Vec::new();
        out.iter_mut()
            .enumerate()
            .try_for_each(|row| stand(&mut excluded, row))?;
    }
    Ok(out)
}

/// A vector of `n` copies of `value` whose memory, when large, is backed by transparent huge
/// pages (Linux, where they are granted on request), as numpy backs its own arrays: a fresh
/// buffer is page-faulted in on first write, and with 4 KiB pages the faults cost more than the
/// writes (writing 112 MB of metric values took 106 ms of CPU with 4 KiB pages, 26 ms with 2 MiB).
fn filled<T: Clone>(value: T, n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(v.spare_capacity_mut());
    v.resize(n, value);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<T>(buffer: &mut [T]) {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(buffer);
    if bytes < 4 * HUGE {
        return;
    }
    let start = buffer.as_mut_ptr() as usize;
    let (first, end) = ((start + HUGE - 1) & !(HUGE - 1), (start + bytes) & !(HUGE - 1));
    // SAFETY: the range lies inside `buffer`, memory this process owns; MADV_HUGEPAGE is advice
    // (it changes how pages are backed, never their contents), and a refusal is harmless.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<T>(_buffer: &mut [T]) {}

/// Below this much work (scores read, or metric values written) a call runs on the calling
/// thread alone. Handing work to the thread pool makes the caller wait for a worker to wake up:
/// tens of microseconds on an idle machine, milliseconds on a busy one, where the uk test set
/// (3,352 × 100 scores, 0.1 ms of work on one core) took 1.7 ms on the pool. 2^21 scores take
/// about 0.5 ms on one core.
pub const PARALLEL_MIN_WORK: usize = 1 << 21;

#[cfg(not(test))]
#[inline]
fn parallel(work: usize) -> bool {
    work >= PARALLEL_MIN_WORK
}

// Tests force either path on the same small inputs (an override on the calling thread).
#[cfg(test)]
fn parallel(work: usize) -> bool {
    tests::FORCE
        .with(|f| f.get())
        .unwrap_or(work >= PARALLEL_MIN_WORK)
}

/// One row: branch-free counting (vectorises), then exclusions and trec keys only where needed.
fn stand_row<T: Score>(
    row: &[T],
    pos: usize,
    excluded: &[usize],
    key: impl Fn(usize) -> Option<u32>,
) -> std::result::Result<Standing, String> {
    let p = row[pos];
    if p.is_nan() {
        return Err("the positive's score is NaN".into());
    }
    let (mut above, mut equal, mut below) = (0u32, 0u32, 0u32);
    for &s in row {
        above += (s > p) as u32;
        equal += (s == p) as u32;
        below += (s < p) as u32;
    }
    if (above + equal + below) as usize != row.len() {
        let c = row.iter().position(|s| s.is_nan()).unwrap_or(0);
        return Err(format!("score of candidate {c} is NaN"));
    }
    let mut st = Standing {
        greater: above,
        ties: equal - 1,
        trec_lost: 0,
        others: row.len() as u32 - 1,
    };
    for &c in excluded {
        let s = row[c];
        if s > p {
            st.greater -= 1;
        } else if s == p {
            st.ties -= 1;
        }
        st.others -= 1;
    }
    if st.ties > 0 {
        if let Some(kp) = key(pos) {
            st.trec_lost = row
                .iter()
                .enumerate()
                .filter(|&(c, &s)| {
                    c != pos
                        && s == p
                        && key(c).unwrap() > kp
                        && excluded.binary_search(&c).is_err()
                })
                .count() as u32;
        }
    }
    Ok(st)
}

/// A ranking metric for one held-out positive per query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Hit ratio at k (equal to recall@k with one positive).
    Hit(u32),
    /// NDCG at k: 1 / log2(rank + 2) within the cut-off (the ideal DCG is 1).
    Ndcg(u32),
    /// Precision at k: hit / k.
    Precision(u32),
    /// Average precision at k: 1 / (rank + 1) within the cut-off.
    Map(u32),
    /// Reciprocal rank, without cut-off.
    Mrr,
    /// Area under the ROC curve: the share of negatives ranked below the positive.
    Auc,
}

impl Metric {
    /// The canonical name: `hr@10`, `ndcg@10`, `precision@10`, `map@10`, `mrr`, `auc`.
    pub fn name(&self) -> String {
        match self {
            Metric::Hit(k) => format!("hr@{k}"),
            Metric::Ndcg(k) => format!("ndcg@{k}"),
            Metric::Precision(k) => format!("precision@{k}"),
            Metric::Map(k) => format!("map@{k}"),
            Metric::Mrr => "mrr".into(),
            Metric::Auc => "auc".into(),
        }
    }
}

impl FromStr for Metric {
    type Err = Error;
    /// Accepts the canonical names and the aliases `recall@k`, `hit@k`, `p@k`.
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::invalid(format!(
                "unknown metric {s:?} (expected hr@K, ndcg@K, precision@K, map@K, mrr or auc)"
            ))
        };
        match lower.as_str() {
            "mrr" => return Ok(Metric::Mrr),
            "auc" => return Ok(Metric::Auc),
            _ => {}
        }
        let (name, k) = lower.split_once('@').ok_or_else(bad)?;
        let k: u32 = k.parse().map_err(|_| bad())?;
        if k == 0 {
            return Err(Error::invalid(format!(
                "metric {s:?}: the cut-off must be at least 1"
            )));
        }
        match name {
            "hr" | "hit" | "recall" => Ok(Metric::Hit(k)),
            "ndcg" => Ok(Metric::Ndcg(k)),
            "precision" | "p" => Ok(Metric::Precision(k)),
            "map" => Ok(Metric::Map(k)),
            _ => Err(bad()),
        }
    }
}

/// The NDCG discount at 0-based rank r.
#[inline]
fn ndcg_gain(r: u32) -> f64 {
    1.0 / ((r as f64) + 2.0).log2()
}

/// H(n) = 1 + 1/2 + ... + 1/n, exact below 64 and by its asymptotic series above (error < 1e-15).
fn harmonic(n: u64) -> f64 {
    if n < 64 {
        (1..=n).map(|i| 1.0 / i as f64).sum()
    } else {
        let x = n as f64;
        let x2 = x * x;
        x.ln() + 0.577_215_664_901_532_9 + 1.0 / (2.0 * x) - 1.0 / (12.0 * x2)
            + 1.0 / (120.0 * x2 * x2)
    }
}

/// The metric of one query under a tie policy.
pub fn metric_value(metric: Metric, st: &Standing, policy: TiePolicy) -> f64 {
    if policy != TiePolicy::Expected || st.ties == 0 {
        let r = st.rank(policy);
        return at_rank(metric, r, st.others);
    }
    // Expected: the positive's rank is uniform on g..=g+t; average the metric over it.
    let g = st.greater;
    let t = st.ties;
    let n = (t + 1) as f64;
    let last = g + t; // inclusive
    let within = |k: u32| -> std::ops::Range<u32> { g..(last + 1).min(k).max(g) };
    match metric {
        Metric::Hit(k) => within(k).len() as f64 / n,
        Metric::Precision(k) => within(k).len() as f64 / n / k as f64,
        Metric::Ndcg(k) => within(k).map(ndcg_gain).sum::<f64>() / n,
        Metric::Map(k) => within(k).map(|r| 1.0 / (r as f64 + 1.0)).sum::<f64>() / n,
        Metric::Mrr => (harmonic(last as u64 + 1) - harmonic(g as u64)) / n,
        Metric::Auc => {
            if st.others == 0 {
                1.0
            } else {
                (st.others as f64 - g as f64 - t as f64 / 2.0) / st.others as f64
            }
        }
    }
}

#[inline]
fn at_rank(metric: Metric, r: u32, others: u32) -> f64 {
    match metric {
        Metric::Hit(k) => (r < k) as u32 as f64,
        Metric::Precision(k) => (r < k) as u32 as f64 / k as f64,
        Metric::Ndcg(k) => {
            if r < k {
                ndcg_gain(r)
            } else {
                0.0
            }
        }
        Metric::Map(k) => {
            if r < k {
                1.0 / (r as f64 + 1.0)
            } else {
                0.0
            }
        }
        Metric::Mrr => 1.0 / (r as f64 + 1.0),
        Metric::Auc => {
            if others == 0 {
                1.0
            } else {
                (others - r) as f64 / others as f64
            }
        }
    }
}

/// Per-query metric values, row-major (queries × metrics).
///
/// Under a deterministic rank the discounts are computed once per query and shared by all
/// cut-offs, so many metrics cost little more than one; the NDCG discounts of the ranks a
/// cut-off keeps and each precision's 1/k are computed once per call (by the same expressions,
/// so to the same bits as per query).
pub fn metric_values(standings: &[Standing], metrics: &[Metric], policy: TiePolicy) -> Vec<f64> {
    let m = metrics.len();
    let mut out = filled(0.0f64, standings.len() * m);
    if m == 0 {
        return out;
    }
    let max_ndcg = metrics
        .iter()
        .filter_map(|m| match m {
            Metric::Ndcg(k) => Some(*k),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let gains: Vec<f64> = (0..max_ndcg.min(1 << 12)).map(ndcg_gain).collect();
    let whole_table = gains.len() as u32 == max_ndcg; // every rank an NDCG cut-off keeps
    let per_k: Vec<f64> = metrics
        .iter()
        .map(|m| match m {
            Metric::Precision(k) => 1.0 / *k as f64,
            _ => 0.0,
        })
        .collect();
    // Branch-free where the rank decides (ranks are data: branches on them mispredict): a value
    // kept or not is `x * hit`, which is x or +0.0 exactly, the bits of the branches.
    let fill = |(row, st): (&mut [f64], &Standing)| {
        if policy == TiePolicy::Expected && st.ties > 0 {
            for (v, &metric) in row.iter_mut().zip(metrics) {
                *v = metric_value(metric, st, policy);
            }
            return;
        }
        let r = st.rank(policy);
        let reciprocal = 1.0 / (r as f64 + 1.0);
        let gain = if max_ndcg == 0 {
            0.0
        } else if whole_table {
            gains[(r as usize).min(gains.len() - 1)] // beyond the table no cut-off keeps r
        } else if r < max_ndcg {
            gains.get(r as usize).copied().unwrap_or_else(|| ndcg_gain(r))
        } else {
            0.0
        };
        for ((v, &metric), &inv_k) in row.iter_mut().zip(metrics).zip(&per_k) {
            *v = match metric {
                Metric::Hit(k) => (r < k) as u32 as f64,
                Metric::Precision(k) => inv_k * (r < k) as u32 as f64,
                Metric::Ndcg(k) => gain * (r < k) as u32 as f64,
                Metric::Map(k) => reciprocal * (r < k) as u32 as f64,
                Metric::Mrr => reciprocal,
                Metric::Auc => at_rank(Metric::Auc, r, st.others),
            };
        }
    };
    if parallel(out.len()) {
        out.par_chunks_mut(m)
            .zip(standings.par_iter())
            .with_min_len(4096)
            .for_each(fill);
    } else {
        out.chunks_mut(m).zip(standings).for_each(fill);
    }
    out
}

/// The means of the columns of a row-major `rows × cols` matrix, in the order numpy's
/// `mean(axis=0)` takes for a C-contiguous matrix of two or more columns: the rows added one
/// after the other, the sums then divided by the row count (so the same bits; with a single
/// column numpy sums pairwise instead). Serial, whatever the size: the order is the result.
pub fn column_means(values: &[f64], cols: usize) -> Vec<f64> {
    let mut sums = vec![0.0f64; cols];
    if cols == 0 {
        return sums;
    }
    for row in values.chunks_exact(cols) {
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
    }
    let rows = (values.len() / cols) as f64;
    for s in sums.iter_mut() {
        *s /= rows;
    }
    sums
}

/// The `k` best columns of every row of a dense score matrix, best first (score descending,
/// then column ascending), leaving out each row's excluded columns. Rows with fewer than `k`
/// eligible columns are padded with index -1 and a NaN score.
pub fn top_k<T: Score>(
    scores: &[T],
    cols: usize,
    k: usize,
    exclude: Option<Csr<'_>>,
) -> Result<(Vec<i64>, Vec<T>)> {
    let rows = Layout::Dense { cols }.rows(scores.len())?;
    if let Some(ex) = exclude {
        if ex.rows() != rows {
            return Err(Error::invalid(format!(
                "scores have {rows} rows but the exclusions have {}",
                ex.rows()
            )));
        }
    }
    let mut index = vec![-1i64; rows * k];
    let mut value = vec![T::nan(); rows * k];
    if k == 0 || rows == 0 {
        return Ok((index, value));
    }
    let scratch = || (Vec::<u32>::new(), Vec::<(T, u32)>::with_capacity(k + 1));
    let best_of_row = |(excluded, best): &mut (Vec<u32>, Vec<(T, u32)>),
                       (i, (idx_out, val_out)): (usize, (&mut [i64], &mut [T]))|
     -> Result<()> {
        let row = &scores[i * cols..(i + 1) * cols];
        excluded.clear();
        if let Some(ex) = exclude {
            excluded.extend_from_slice(ex.row(i));
            excluded.sort_unstable();
        }
        best.clear();
        let mut next_excluded = 0usize;
        for (c, &s) in row.iter().enumerate() {
            while next_excluded < excluded.len() && (excluded[next_excluded] as usize) < c {
                next_excluded += 1;
            }
            if next_excluded < excluded.len() && excluded[next_excluded] as usize == c {
                continue;
            }
            if s.is_nan() {
                return Err(Error::invalid(format!(
                    "row {i}: score of column {c} is NaN"
                )));
            }
            // Columns arrive in ascending order, so an equal score never displaces (no score
            // here is NaN: checked above, and `best` holds only such scores).
            if best.len() == k && s <= best[k - 1].0 {
                continue;
            }
            let at = best.partition_point(|&(b, _)| b >= s);
            best.insert(at, (s, c as u32));
            best.truncate(k);
        }
        for (j, &(s, c)) in best.iter().enumerate() {
            idx_out[j] = c as i64;
            val_out[j] = s;
        }
        Ok(())
    };
    if parallel(scores.len()) {
        index
            .par_chunks_mut(k)
            .zip(value.par_chunks_mut(k))
            .enumerate()
            .with_min_len(16)
            .try_for_each_init(scratch, best_of_row)?;
    } else {
        let mut own = scratch();
        index
            .chunks_mut(k)
            .zip(value.chunks_mut(k))
            .enumerate()
            .try_for_each(|row| best_of_row(&mut own, row))?;
    }
    Ok((index, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Some(true): this thread's calls run on the pool; Some(false): on the caller alone.
        pub(super) static FORCE: Cell<Option<bool>> = const { Cell::new(None) };
    }

    fn forced<R>(parallel: bool, f: impl FnOnce() -> R) -> R {
        FORCE.with(|c| c.set(Some(parallel)));
        let out = f();
        FORCE.with(|c| c.set(None));
        out
    }

    #[test]
    fn serial_and_parallel_paths_agree() {
        // Small inputs run on the caller's thread, large ones on the pool: both give the same
        // standings (exclusions, trec keys, ragged rows), metric values and top-k.
        let mut rng = crate::rng::Rng::new(11);
        let (rows, cols) = (700usize, 37usize);
        let scores: Vec<f32> = (0..rows * cols).map(|_| rng.below(9) as f32 / 4.0).collect();
        let keys: Vec<u32> = (0..rows * cols).map(|_| rng.below(1000) as u32).collect();
        let positive: Vec<u32> = (0..rows).map(|_| rng.below(cols as u64) as u32).collect();
        let mut ex_off = vec![0u64];
        let mut ex_val = Vec::new();
        for _ in 0..rows {
            for _ in 0..rng.below(6) {
                ex_val.push(rng.below(cols as u64 + 3) as u32);
            }
            ex_off.push(ex_val.len() as u64);
        }
        let ex = Some(Csr::new(&ex_off, &ex_val).unwrap());
        let offsets: Vec<u64> = (0..=rows as u64).map(|i| i * cols as u64).collect();
        let ragged = Layout::Ragged { offsets: &offsets };
        let dense = Layout::Dense { cols };
        let metrics = [
            Metric::Hit(5),
            Metric::Ndcg(10),
            Metric::Precision(3),
            Metric::Map(20),
            Metric::Mrr,
            Metric::Auc,
        ];
        let policies = [
            TiePolicy::Pessimistic,
            TiePolicy::Optimistic,
            TiePolicy::Expected,
            TiePolicy::Trec,
        ];
        let run = |parallel: bool| {
            forced(parallel, || {
                let by_score = TieKeys::PerScore(&keys);
                let st = standings(&scores, dense, &positive, ex, by_score).unwrap();
                let st_ragged = standings(&scores, ragged, &positive, ex, TieKeys::None).unwrap();
                let by_column = TieKeys::PerColumn(&keys[..cols]);
                let st_column = standings(&scores, dense, &positive, None, by_column).unwrap();
                let values: Vec<Vec<f64>> =
                    policies.iter().map(|&p| metric_values(&st, &metrics, p)).collect();
                let top = top_k(&scores, cols, 7, ex).unwrap();
                (st, st_ragged, st_column, values, top)
            })
        };
        let (serial, par) = (run(false), run(true));
        assert!(serial.0.iter().any(|s| s.trec_lost > 0));
        assert!(serial.0.iter().any(|s| s.others < cols as u32 - 1));
        assert_eq!(serial, par);
        // errors name the same (only) bad row either way
        let mut bad = scores.clone();
        bad[5 * cols + 3] = f32::NAN;
        let first = vec![0u32; rows];
        let err = |parallel| {
            forced(parallel, || {
                standings(&bad, dense, &first, None, TieKeys::None).unwrap_err().to_string()
            })
        };
        assert_eq!(err(false), err(true));
        assert!(err(false).contains("row 5"), "{}", err(false));
    }

    fn st(g: u32, t: u32, others: u32) -> Standing {
        Standing {
            greater: g,
            ties: t,
            trec_lost: 0,
            others,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn counts_above_and_tied_without_sorting() {
        let scores = [0.5f32, 0.9, 0.5, 0.1, 0.7, 0.5];
        let s = standings(
            &scores,
            Layout::Dense { cols: 6 },
            &[0],
            None,
            TieKeys::None,
        )
        .unwrap();
        assert_eq!(s[0], st(2, 2, 5));
        assert_eq!(s[0].rank(TiePolicy::Pessimistic), 4);
        assert_eq!(s[0].rank(TiePolicy::Optimistic), 2);
    }

    #[test]
    fn positive_anywhere_and_ragged_rows() {
        let scores = [1.0f64, 3.0, 2.0, /* row 2 */ 5.0, 4.0];
        let offsets = [0u64, 3, 5];
        let s = standings(
            &scores,
            Layout::Ragged { offsets: &offsets },
            &[2, 1],
            None,
            TieKeys::None,
        )
        .unwrap();
        assert_eq!(s[0], st(1, 0, 2));
        assert_eq!(s[1], st(1, 0, 1));
    }

    #[test]
    fn float32_ties_stay_ties() {
        // Distinct as f64, equal once rounded to f32 by the model: they must count as ties.
        let a = 0.1f64 as f32;
        let b = (0.1f64 + 1e-12) as f32;
        let s = standings(
            &[a, b],
            Layout::Dense { cols: 2 },
            &[0],
            None,
            TieKeys::None,
        )
        .unwrap();
        assert_eq!(s[0].ties, 1);
    }

    #[test]
    fn nan_is_an_error_naming_the_row() {
        let e = standings(
            &[1.0f32, 2.0, 1.0, f32::NAN],
            Layout::Dense { cols: 2 },
            &[0, 0],
            None,
            TieKeys::None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("row 1") && e.contains("NaN"), "{e}");
        let e = standings(
            &[f32::NAN, 2.0],
            Layout::Dense { cols: 2 },
            &[0],
            None,
            TieKeys::None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("positive"));
    }

    #[test]
    fn exclusions_leave_columns_out() {
        // Positive at column 3 (score 0.5); column 1 (above) and 2 (tie) are excluded; the
        // positive itself and duplicates in the exclusion list are ignored.
        let scores = [0.9f32, 0.8, 0.5, 0.5, 0.5, 0.1];
        let ex_off = [0u64, 5];
        let ex_val = [1u32, 2, 2, 3, 99];
        let ex = Csr::new(&ex_off, &ex_val).unwrap();
        let s = standings(
            &scores,
            Layout::Dense { cols: 6 },
            &[3],
            Some(ex),
            TieKeys::None,
        )
        .unwrap();
        assert_eq!(s[0], st(1, 1, 3));
    }

    #[test]
    fn trec_keys_break_ties_by_descending_id() {
        // Candidates tied at 0.5: positive key 5; tied keys 7 (wins over positive) and 2 (loses).
        let scores = [0.5f32, 0.5, 0.5, 0.9];
        let keys = [5u32, 7, 2, 0];
        let s = standings(
            &scores,
            Layout::Dense { cols: 4 },
            &[0],
            None,
            TieKeys::PerScore(&keys),
        )
        .unwrap();
        assert_eq!(s[0].trec_lost, 1);
        assert_eq!(s[0].rank(TiePolicy::Trec), 2);
        let s = standings(
            &scores,
            Layout::Dense { cols: 4 },
            &[0],
            None,
            TieKeys::PerColumn(&keys),
        )
        .unwrap();
        assert_eq!(s[0].trec_lost, 1);
    }

    #[test]
    fn hand_computed_metrics_at_a_rank() {
        let s = st(2, 0, 99); // rank 2 (third place)
        let p = TiePolicy::Pessimistic;
        assert_eq!(metric_value(Metric::Hit(3), &s, p), 1.0);
        assert_eq!(metric_value(Metric::Hit(2), &s, p), 0.0);
        assert!(close(metric_value(Metric::Ndcg(10), &s, p), 0.5)); // 1/log2(4)
        assert!(close(metric_value(Metric::Precision(5), &s, p), 0.2));
        assert!(close(metric_value(Metric::Map(10), &s, p), 1.0 / 3.0));
        assert!(close(metric_value(Metric::Mrr, &s, p), 1.0 / 3.0));
        assert!(close(metric_value(Metric::Auc, &s, p), 97.0 / 99.0));
    }

    #[test]
    fn constant_model_under_each_policy() {
        // 1 positive + 99 negatives, all with one score.
        let s = st(0, 99, 99);
        assert_eq!(
            metric_value(Metric::Hit(10), &s, TiePolicy::Pessimistic),
            0.0
        );
        assert_eq!(
            metric_value(Metric::Hit(10), &s, TiePolicy::Optimistic),
            1.0
        );
        assert!(close(
            metric_value(Metric::Hit(10), &s, TiePolicy::Expected),
            0.1
        ));
        assert!(close(
            metric_value(Metric::Auc, &s, TiePolicy::Expected),
            0.5
        ));
        assert!(close(
            metric_value(Metric::Auc, &s, TiePolicy::Pessimistic),
            0.0
        ));
        let mrr: f64 = (1..=100).map(|r| 1.0 / r as f64).sum::<f64>() / 100.0;
        assert!(close(
            metric_value(Metric::Mrr, &s, TiePolicy::Expected),
            mrr
        ));
        let ndcg: f64 = (0..10).map(|r| 1.0 / ((r + 2) as f64).log2()).sum::<f64>() / 100.0;
        assert!(close(
            metric_value(Metric::Ndcg(10), &s, TiePolicy::Expected),
            ndcg
        ));
    }

    #[test]
    fn expected_equals_mean_over_tie_orders() {
        for g in 0..6u32 {
            for t in 0..30u32 {
                let s = st(g, t, g + t + 5);
                for m in [
                    Metric::Hit(3),
                    Metric::Ndcg(7),
                    Metric::Precision(4),
                    Metric::Map(9),
                    Metric::Mrr,
                    Metric::Auc,
                ] {
                    let mean =
                        (g..=g + t).map(|r| at_rank(m, r, s.others)).sum::<f64>() / (t + 1) as f64;
                    assert!(
                        close(metric_value(m, &s, TiePolicy::Expected), mean),
                        "{m:?} g={g} t={t}"
                    );
                }
            }
        }
    }

    #[test]
    fn harmonic_series_is_accurate() {
        let exact: f64 = (1..=5000u64).map(|i| 1.0 / i as f64).sum();
        assert!((harmonic(5000) - exact).abs() < 1e-12);
        let exact: f64 = (1..=64u64).map(|i| 1.0 / i as f64).sum();
        assert!((harmonic(64) - exact).abs() < 1e-13);
    }

    #[test]
    fn metric_names_round_trip() {
        for name in ["hr@10", "ndcg@5", "precision@20", "map@10", "mrr", "auc"] {
            assert_eq!(name.parse::<Metric>().unwrap().name(), name);
        }
        assert_eq!("Recall@10".parse::<Metric>().unwrap(), Metric::Hit(10));
        assert_eq!("P@5".parse::<Metric>().unwrap(), Metric::Precision(5));
        assert!("ndcg@0".parse::<Metric>().is_err());
        assert!("ndcg".parse::<Metric>().is_err());
        assert!("foo@3".parse::<Metric>().is_err());
    }

    #[test]
    fn metric_matrix_equals_one_by_one_values() {
        let metrics = [
            Metric::Hit(5),
            Metric::Ndcg(10),
            Metric::Precision(3),
            Metric::Map(20),
            Metric::Mrr,
            Metric::Auc,
        ];
        let mut all = Vec::new();
        for g in 0..25u32 {
            for t in [0u32, 1, 7] {
                all.push(Standing {
                    greater: g,
                    ties: t,
                    trec_lost: t / 2,
                    others: g + t + 4,
                });
            }
        }
        for policy in [
            TiePolicy::Pessimistic,
            TiePolicy::Optimistic,
            TiePolicy::Expected,
            TiePolicy::Trec,
        ] {
            let v = metric_values(&all, &metrics, policy);
            for (i, st) in all.iter().enumerate() {
                for (j, &m) in metrics.iter().enumerate() {
                    assert!(
                        close(v[i * metrics.len() + j], metric_value(m, st, policy)),
                        "{policy:?} {m:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn metric_matrix_has_the_bits_of_each_value_alone() {
        // The per-call tables (NDCG discounts, 1/k) give exactly what each value computes alone,
        // ranks beyond the discount table included.
        let metrics = [
            Metric::Ndcg(5000),
            Metric::Ndcg(3),
            Metric::Precision(7),
            Metric::Precision(20),
            Metric::Hit(10),
            Metric::Map(10),
            Metric::Mrr,
            Metric::Auc,
        ];
        let all: Vec<Standing> = [0u32, 1, 2, 5, 6, 9, 19, 100, 4095, 4096, 4999, 7000]
            .iter()
            .map(|&g| st(g, 0, 8000))
            .collect();
        let small = [Metric::Ndcg(10), Metric::Ndcg(1), Metric::Precision(3), Metric::Map(4)];
        for metrics in [&metrics[..], &small[..], &metrics[2..]] {
            for policy in [TiePolicy::Pessimistic, TiePolicy::Optimistic] {
                let v = metric_values(&all, metrics, policy);
                for (i, s) in all.iter().enumerate() {
                    for (j, &m) in metrics.iter().enumerate() {
                        let alone = at_rank(m, s.rank(policy), s.others);
                        let got = v[i * metrics.len() + j];
                        assert_eq!(got.to_bits(), alone.to_bits(), "{m:?} {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn large_buffers_on_huge_pages_hold_their_values() {
        for n in [0usize, 5, 3 << 20] {
            let v = filled(7u32, n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn column_means_add_rows_in_order() {
        // 0.1 + 0.2 + 0.3 in row order is 0.6000000000000001; another order gives 0.6.
        let v = [0.1, 1.0, 0.2, 2.0, 0.3, 4.0];
        let means = column_means(&v, 2);
        assert_eq!(means, vec![((0.1 + 0.2) + 0.3) / 3.0, 7.0 / 3.0]);
        assert_ne!(means[0], (0.1 + (0.2 + 0.3)) / 3.0);
        assert!(column_means(&[], 3).iter().all(|m| m.is_nan())); // no row: 0 / 0, as numpy
    }

    #[test]
    fn metric_matrix_is_row_major() {
        let s = [st(0, 0, 9), st(12, 0, 99)];
        let v = metric_values(&s, &[Metric::Hit(10), Metric::Mrr], TiePolicy::Pessimistic);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], 1.0);
        assert_eq!(v[1], 1.0);
        assert_eq!(v[2], 0.0);
        assert!(close(v[3], 1.0 / 13.0));
    }

    #[test]
    fn top_k_orders_by_score_then_column_and_skips_exclusions() {
        let scores = [
            0.3f32, 0.9, 0.5, 0.9, 0.1, /* row 1 */ 1.0, 2.0, 3.0, 4.0, 5.0,
        ];
        let ex_off = [0u64, 1, 3];
        let ex_val = [3u32, 4, 0];
        let ex = Csr::new(&ex_off, &ex_val).unwrap();
        let (idx, val) = top_k(&scores, 5, 3, Some(ex)).unwrap();
        assert_eq!(idx, vec![1, 2, 0, 3, 2, 1]);
        assert_eq!(val, vec![0.9, 0.5, 0.3, 4.0, 3.0, 2.0]);
        let (idx, _) = top_k(&scores, 5, 3, None).unwrap();
        assert_eq!(&idx[..3], &[1, 3, 2]); // tie 0.9: lower column first
    }

    #[test]
    fn top_k_pads_short_rows_and_rejects_nan() {
        let (idx, val) = top_k(&[1.0f64, 2.0], 2, 3, None).unwrap();
        assert_eq!(idx, vec![1, 0, -1]);
        assert!(val[2].is_nan());
        assert!(top_k(&[1.0f32, f32::NAN], 2, 1, None).is_err());
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let mut rng = crate::rng::Rng::new(7);
        let cols = 300;
        let scores: Vec<f32> = (0..cols * 20)
            .map(|_| (rng.below(50) as f32) / 7.0)
            .collect();
        let (idx, _) = top_k(&scores, cols, 25, None).unwrap();
        for i in 0..20 {
            let row = &scores[i * cols..(i + 1) * cols];
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
            let want: Vec<i64> = order[..25].iter().map(|&c| c as i64).collect();
            assert_eq!(&idx[i * 25..(i + 1) * 25], &want[..]);
        }
    }
}

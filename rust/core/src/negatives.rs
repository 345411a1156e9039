//! Negative sampling: the stored evaluation candidates and the per-epoch training negatives.
//!
//! Every random stream is keyed (seed + ids), so results do not depend on thread count.
//!
//! Evaluation negatives are distinct items drawn from a pool minus an exclusion set:
//! * protocol `forec`: pool = the items of the user's market; excluded = every item the user
//!   has in that market (training, validation and test);
//! * protocol `acmr`: pool = the items of all loaded markets; excluded = the user's training
//!   items in that market and the held-out item.
//!
//! Training negatives are drawn with replacement from a pool (the row's market, or all items),
//! excluding a per-user set that the caller chooses by protocol: FOREC excluded all of the user's
//! positives in the market, ACMR only the training items.

use crate::error::{Error, Result};
use crate::rng::Rng;
use rayon::prelude::*;

/// A borrowed compressed-sparse-row list of lists.
#[derive(Clone, Copy, Debug)]
pub struct Csr<'a> {
    pub offsets: &'a [u64],
    pub values: &'a [u32],
}

impl<'a> Csr<'a> {
    pub fn new(offsets: &'a [u64], values: &'a [u32]) -> Result<Self> {
        if offsets.is_empty() || offsets[0] != 0 {
            return Err(Error::invalid("CSR offsets must start with 0"));
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::invalid("CSR offsets must be non-decreasing"));
        }
        if *offsets.last().unwrap() as usize != values.len() {
            return Err(Error::invalid(format!(
                "CSR offsets end at {} but there are {} values",
                offsets.last().unwrap(),
                values.len()
            )));
        }
        Ok(Csr { offsets, values })
    }

    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    pub fn row(&self, i: usize) -> &'a [u32] {
        &self.values[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// An owned CSR (offsets has one more entry than there are rows).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedCsr {
    pub offsets: Vec<u64>,
    pub values: Vec<u32>,
}

impl OwnedCsr {
    pub fn view(&self) -> Csr<'_> {
        Csr { offsets: &self.offsets, values: &self.values }
    }

    pub fn from_rows<I: IntoIterator<Item = Vec<u32>>>(rows: I) -> Self {
        let mut out = OwnedCsr { offsets: vec![0], values: Vec::new() };
        for r in rows {
            out.values.extend(r);
            out.offsets.push(out.values.len() as u64);
        }
        out
    }

    /// Builds `rows` rows in parallel straight into one flat buffer (no per-row allocation):
    /// row `i` gets at most `upper(i)` slots, `fill(i, slots)` writes it and returns its length,
    /// and the rows are then compacted in place. This keeps peak memory at one buffer of the
    /// upper-bound size, which matters for millions of rows.
    pub fn build_par<U, F>(rows: usize, upper: U, fill: F) -> Self
    where
        U: Fn(usize) -> usize,
        F: Fn(usize, &mut [u32]) -> usize + Sync,
    {
        const BLOCK: usize = 4096;
        let mut bounds = Vec::with_capacity(rows + 1);
        bounds.push(0usize);
        for i in 0..rows {
            bounds.push(bounds[i] + upper(i));
        }
        let mut values = vec![0u32; bounds[rows]];
        let mut lens = vec![0usize; rows];
        let mut blocks = Vec::with_capacity(rows.div_ceil(BLOCK));
        let mut rest = values.as_mut_slice();
        for start in (0..rows).step_by(BLOCK) {
            let end = (start + BLOCK).min(rows);
            let (head, tail) = rest.split_at_mut(bounds[end] - bounds[start]);
            blocks.push((start, end, head));
            rest = tail;
        }
        let bounds_ref = &bounds;
        blocks.into_par_iter().zip(lens.par_chunks_mut(BLOCK)).for_each(|((start, end, slots), lens)| {
            let base = bounds_ref[start];
            for i in start..end {
                let row = &mut slots[bounds_ref[i] - base..bounds_ref[i + 1] - base];
                let n = fill(i, row);
                assert!(n <= row.len(), "row {i} wrote {n} values into {} slots", row.len());
                lens[i - start] = n;
            }
        });
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0u64);
        let mut written = 0usize;
        for i in 0..rows {
            values.copy_within(bounds[i]..bounds[i] + lens[i], written);
            written += lens[i];
            offsets.push(written as u64);
        }
        values.truncate(written);
        OwnedCsr { offsets, values }
    }
}

/// Number of distinct values of sorted `a` that are also in sorted `b` (repeats count once).
fn overlap_sorted(a: &[u32], b: &[u32]) -> usize {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .enumerate()
        .filter(|&(i, x)| (i == 0 || small[i - 1] != *x) && large.binary_search(x).is_ok())
        .count()
}

/// Sorted `pool` minus sorted `exclude`.
fn difference_sorted(pool: &[u32], exclude: &[u32]) -> Vec<u32> {
    pool.iter().copied().filter(|x| exclude.binary_search(x).is_err()).collect()
}

/// Draws `out.len()` distinct items from `pool` (sorted, unique) not in `exclude` (sorted).
/// The caller has checked that enough items are available.
fn draw_distinct(rng: &mut Rng, pool: &[u32], exclude: &[u32], out: &mut [u32]) {
    let n = out.len();
    if (exclude.len() + n) * 4 <= pool.len() {
        // Sparse exclusions: rejection sampling, expected fewer than 4/3 draws per item.
        let mut filled = 0;
        while filled < n {
            let cand = pool[rng.below(pool.len() as u64) as usize];
            if exclude.binary_search(&cand).is_err() && !out[..filled].contains(&cand) {
                out[filled] = cand;
                filled += 1;
            }
        }
    } else {
        // Dense exclusions: a partial Fisher–Yates over the explicit complement.
        let mut rest = difference_sorted(pool, exclude);
        for i in 0..n {
            let j = i + rng.below((rest.len() - i) as u64) as usize;
            rest.swap(i, j);
            out[i] = rest[i];
        }
    }
}

/// Evaluation negatives for a batch of queries: `n` distinct items per query, returned row-major
/// (`queries × n`). Query `q` draws from pool `query_pool[q]` minus `exclude.row(q)` (sorted)
/// with a stream keyed by `query_keys[q]`. Fails naming `describe(q)` when a pool is too small.
pub fn sample_distinct(
    pools: Csr<'_>,
    query_pool: &[u32],
    exclude: Csr<'_>,
    query_keys: &[u64],
    n: usize,
    seed: u64,
    describe: &(dyn Fn(usize) -> String + Sync),
) -> Result<Vec<u32>> {
    let q = query_pool.len();
    if exclude.rows() != q || query_keys.len() != q {
        return Err(Error::invalid("sample_distinct: query_pool, exclude and query_keys differ in length"));
    }
    if let Some(&bad) = query_pool.iter().find(|&&p| p as usize >= pools.rows()) {
        return Err(Error::invalid(format!("sample_distinct: pool {bad} does not exist ({} pools)", pools.rows())));
    }
    check_available(pools, query_pool, exclude, n, describe)?;
    let mut out = vec![0u32; q * n];
    fill_distinct(&mut out, n, 0, pools, query_pool, exclude, query_keys, n, seed);
    Ok(out)
}

/// Fails naming the first query whose pool minus its exclusions has fewer than `n` items.
pub(crate) fn check_available(
    pools: Csr<'_>,
    query_pool: &[u32],
    exclude: Csr<'_>,
    n: usize,
    describe: &(dyn Fn(usize) -> String + Sync),
) -> Result<()> {
    let q = query_pool.len();
    // Check availability first so errors are deterministic (the first failing query).
    let shortfall = (0..q).into_par_iter().find_first(|&i| {
        let pool = pools.row(query_pool[i] as usize);
        pool.len() - overlap_sorted(pool, exclude.row(i)) < n
    });
    if let Some(i) = shortfall {
        let pool = pools.row(query_pool[i] as usize);
        let avail = pool.len() - overlap_sorted(pool, exclude.row(i));
        return Err(Error::invalid(format!(
            "{}: only {avail} items can serve as negatives but {n} were requested (lower the number of evaluation negatives)",
            describe(i)
        )));
    }
    Ok(())
}

/// Writes query `i`'s `n` negatives to `out[i * stride + offset..][..n]`, so callers can place
/// them inside wider rows without an intermediate copy. Availability must be checked first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_distinct(
    out: &mut [u32],
    stride: usize,
    offset: usize,
    pools: Csr<'_>,
    query_pool: &[u32],
    exclude: Csr<'_>,
    query_keys: &[u64],
    n: usize,
    seed: u64,
) {
    if n == 0 || stride == 0 {
        return;
    }
    out.par_chunks_mut(stride).enumerate().for_each(|(i, row)| {
        let mut rng = Rng::for_stream(seed, &[query_keys[i]]);
        draw_distinct(&mut rng, pools.row(query_pool[i] as usize), exclude.row(i), &mut row[offset..offset + n]);
    });
}

/// Per-epoch training negatives for rows grouped by user (CSR `train_items` over groups).
pub struct TrainNegativeSampler {
    pools: OwnedCsr,
    group_pool: Vec<u32>,
    /// Each group's excluded items, sorted and unique.
    positives: OwnedCsr,
    /// Row offsets of each group in the training arrays.
    row_offsets: Vec<u64>,
    k: usize,
    seed: u64,
}

/// Groups of consecutive groups whose rows are sampled by one task.
const GROUPS_PER_TASK: usize = 512;

impl TrainNegativeSampler {
    /// Training rows are grouped by CSR `row_offsets` (one group per market and user);
    /// `group_pool[g]` names the pool of group `g` (a row of `pools`, sorted unique items) and
    /// `exclude.row(g)` the items it must never draw (any order, duplicates allowed).
    pub fn new(
        row_offsets: &[u64],
        group_pool: &[u32],
        pools: Csr<'_>,
        exclude: Csr<'_>,
        k: usize,
        seed: u64,
    ) -> Result<Self> {
        let groups = row_offsets.len().saturating_sub(1);
        if row_offsets.first() != Some(&0) || row_offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::invalid("row_offsets must start at 0 and be non-decreasing"));
        }
        if group_pool.len() != groups || exclude.rows() != groups {
            return Err(Error::invalid(format!(
                "group_pool has {} entries and exclude {} rows but there are {groups} groups",
                group_pool.len(),
                exclude.rows()
            )));
        }
        if let Some(&bad) = group_pool.iter().find(|&&p| p as usize >= pools.rows()) {
            return Err(Error::invalid(format!("pool {bad} does not exist ({} pools)", pools.rows())));
        }
        for p in 0..pools.rows() {
            if pools.row(p).windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::invalid(format!("pool {p} is not sorted and unique")));
            }
        }
        let sorted: Vec<Vec<u32>> = (0..groups)
            .into_par_iter()
            .map(|g| {
                let mut v = exclude.row(g).to_vec();
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let positives = OwnedCsr::from_rows(sorted);
        if let Some(g) = (0..groups).into_par_iter().find_first(|&g| {
            let pool = pools.row(group_pool[g] as usize);
            row_offsets[g + 1] > row_offsets[g] && pool.len() == overlap_sorted(pool, positives.view().row(g))
        }) {
            return Err(Error::invalid(format!(
                "group {g} excludes every item of its pool: no training negative exists"
            )));
        }
        Ok(TrainNegativeSampler {
            pools: OwnedCsr { offsets: pools.offsets.to_vec(), values: pools.values.to_vec() },
            group_pool: group_pool.to_vec(),
            positives,
            row_offsets: row_offsets.to_vec(),
            k,
            seed,
        })
    }

    pub fn rows(&self) -> usize {
        *self.row_offsets.last().unwrap() as usize
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Fills `out` (`rows × k`, row-major) with the negatives of `epoch`.
    pub fn sample_into(&self, epoch: u64, out: &mut [u32]) -> Result<()> {
        let k = self.k;
        if out.len() != self.rows() * k {
            return Err(Error::invalid(format!(
                "output buffer has {} entries, expected rows × k = {}",
                out.len(),
                self.rows() * k
            )));
        }
        let groups = self.group_pool.len();
        // Cut `out` at task boundaries (blocks of whole groups) so tasks write disjoint slices.
        let mut tasks = Vec::with_capacity(groups / GROUPS_PER_TASK + 1);
        let mut rest = out;
        for first in (0..groups).step_by(GROUPS_PER_TASK) {
            let last = (first + GROUPS_PER_TASK).min(groups);
            let len = (self.row_offsets[last] - self.row_offsets[first]) as usize * k;
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            tasks.push((first, last, head));
            rest = tail;
        }
        let positives = self.positives.view();
        let pools = self.pools.view();
        tasks.into_par_iter().for_each(|(first, last, block)| {
            let mut at = 0;
            let mut complement = Vec::new();
            for g in first..last {
                let n = (self.row_offsets[g + 1] - self.row_offsets[g]) as usize * k;
                if n == 0 {
                    continue;
                }
                let dst = &mut block[at..at + n];
                at += n;
                let mut rng = Rng::for_stream(self.seed, &[epoch, g as u64]);
                let pool = pools.row(self.group_pool[g] as usize);
                let pos = positives.row(g);
                if pos.len() * 2 <= pool.len() {
                    for slot in dst.iter_mut() {
                        *slot = loop {
                            let c = pool[rng.below(pool.len() as u64) as usize];
                            if pos.binary_search(&c).is_err() {
                                break c;
                            }
                        };
                    }
                } else {
                    complement.clear();
                    complement.extend(pool.iter().copied().filter(|x| pos.binary_search(x).is_err()));
                    for slot in dst.iter_mut() {
                        *slot = complement[rng.below(complement.len() as u64) as usize];
                    }
                }
            }
        });
        Ok(())
    }

    pub fn sample(&self, epoch: u64) -> Vec<u32> {
        let mut out = vec![0u32; self.rows() * self.k];
        self.sample_into(epoch, &mut out).expect("buffer sized by construction");
        out
    }
}

/// Instances per parallel task of [`gather_instances`].
const INSTANCES_PER_TASK: usize = 1 << 14;

/// The pointwise training instances of an epoch, written in the epoch's order. Instance `p < n`
/// (`n` = training rows) is row `p`'s positive: key `keys[p]`, item `items[p]`, label 1; instance
/// `n + r·k + c` is row `r`'s `c`-th negative: key `keys[r]`, item `negatives[rows[r]·k + c]`
/// (`negatives` is the sampler's `rows × k` draw over all training rows, `rows[r]` row `r`'s
/// place in it), label 0. Position `j` of the outputs gets instance `order[j]`, so the batches of
/// the epoch are contiguous slices, built in one pass without the unordered instance arrays.
#[allow(clippy::too_many_arguments)]
pub fn gather_instances(
    order: &[i64],
    keys: &[i64],
    items: &[i64],
    negatives: &[u32],
    k: usize,
    rows: &[i64],
    out_keys: &mut [i64],
    out_items: &mut [i64],
    out_labels: &mut [f32],
) -> Result<()> {
    let n = keys.len();
    if items.len() != n || rows.len() != n {
        return Err(Error::invalid(format!(
            "gather_instances: {n} keys, {} items and {} rows differ in length",
            items.len(),
            rows.len()
        )));
    }
    let m = order.len();
    if out_keys.len() != m || out_items.len() != m || out_labels.len() != m {
        return Err(Error::invalid(format!("gather_instances: the outputs must hold {m} instances, as `order` does")));
    }
    let drawn = negatives.len().checked_div(k).unwrap_or(0);
    if k > 0 && !negatives.len().is_multiple_of(k) {
        return Err(Error::invalid(format!("gather_instances: {} negatives are not rows of {k}", negatives.len())));
    }
    if k > 0 {
        if let Some(r) = rows.iter().position(|&r| r < 0 || r as usize >= drawn) {
            return Err(Error::invalid(format!(
                "gather_instances: row {r} points at negative row {} of {drawn}",
                rows[r]
            )));
        }
    }
    let total = (n * (1 + k)) as i64;
    out_keys
        .par_chunks_mut(INSTANCES_PER_TASK)
        .zip(out_items.par_chunks_mut(INSTANCES_PER_TASK))
        .zip(out_labels.par_chunks_mut(INSTANCES_PER_TASK))
        .zip(order.par_chunks(INSTANCES_PER_TASK))
        .try_for_each(|(((ok, oi), ol), ord)| {
            for (j, &p) in ord.iter().enumerate() {
                if p < 0 || p >= total {
                    return Err(Error::invalid(format!("gather_instances: instance {p} is outside 0..{total}")));
                }
                let p = p as usize;
                if p < n {
                    (ok[j], oi[j], ol[j]) = (keys[p], items[p], 1.0);
                } else {
                    let (r, c) = ((p - n) / k, (p - n) % k);
                    (ok[j], oi[j], ol[j]) = (keys[r], negatives[rows[r] as usize * k + c] as i64, 0.0);
                }
            }
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_follow_the_order() {
        // 3 rows (keys 10, 11, 12; items 100, 101, 102), k = 2, drawn over 4 rows of which
        // rows 0, 2, 3 train: row r's negatives are negatives[rows[r]].
        let negatives = [1, 2, 3, 4, 5, 6, 7, 8];
        let (keys, items, rows) = ([10, 11, 12], [100, 101, 102], [0, 2, 3]);
        let order = [8, 0, 3, 2, 5, 1, 4, 7, 6];
        let (mut k, mut i, mut l) = ([0i64; 9], [0i64; 9], [9f32; 9]);
        gather_instances(&order, &keys, &items, &negatives, 2, &rows, &mut k, &mut i, &mut l).unwrap();
        // instances: 0..3 positives; 3, 4 row 0's (1, 2); 5, 6 row 1's (5, 6); 7, 8 row 2's (7, 8)
        assert_eq!(k, [12, 10, 10, 12, 11, 11, 10, 12, 11]);
        assert_eq!(i, [8, 100, 1, 102, 5, 101, 2, 7, 6]);
        assert_eq!(l, [0., 1., 0., 1., 0., 1., 0., 0., 0.]);
        // A larger order than one task, cycling (as equal sampling repeats a market's batches).
        let long: Vec<i64> = (0..40_000).map(|j| (j * 7) % 9).collect();
        let (mut k2, mut i2, mut l2) = (vec![0i64; 40_000], vec![0i64; 40_000], vec![0f32; 40_000]);
        gather_instances(&long, &keys, &items, &negatives, 2, &rows, &mut k2, &mut i2, &mut l2).unwrap();
        let pos = |p: i64| order.iter().position(|&q| q == p).unwrap();
        for (j, &p) in long.iter().enumerate() {
            assert_eq!((k2[j], i2[j], l2[j]), (k[pos(p)], i[pos(p)], l[pos(p)]));
        }
        let bad = gather_instances(&[9], &keys, &items, &negatives, 2, &rows, &mut k[..1], &mut i[..1], &mut l[..1]);
        assert_eq!(bad.unwrap_err().to_string(), "gather_instances: instance 9 is outside 0..9");
        let bad = gather_instances(&[0], &keys, &items, &negatives, 2, &[0, 2, 4], &mut k[..1], &mut i[..1], &mut l[..1]);
        assert_eq!(bad.unwrap_err().to_string(), "gather_instances: row 2 points at negative row 4 of 4");
    }

    #[test]
    fn build_par_matches_from_rows_with_short_rows() {
        // 10_000 rows (several blocks); row i has room for i % 7 values and writes fewer.
        let rows: Vec<Vec<u32>> = (0..10_000u32).map(|i| (0..(i % 7) / 2).map(|j| i * 10 + j).collect()).collect();
        let flat = OwnedCsr::build_par(rows.len(), |i| i % 7, |i, slots| {
            slots[..rows[i].len()].copy_from_slice(&rows[i]);
            rows[i].len()
        });
        assert_eq!(flat, OwnedCsr::from_rows(rows.clone()));
        let empty = OwnedCsr::build_par(0, |_| 1, |_, _| 0);
        assert_eq!(empty.offsets, [0]);
    }

    #[test]
    fn overlap_counts_repeats_once() {
        assert_eq!(overlap_sorted(&[0, 0], &[0, 1, 2]), 1);
        assert_eq!(overlap_sorted(&[0, 1, 2], &[1, 1]), 1);
        assert_eq!(overlap_sorted(&[0, 2, 2, 5], &[1, 2, 3, 4, 5, 6, 7]), 2);
    }

    fn owned(rows: &[&[u32]]) -> OwnedCsr {
        OwnedCsr::from_rows(rows.iter().map(|r| r.to_vec()))
    }

    #[test]
    fn distinct_negatives_avoid_exclusions_and_are_deterministic() {
        let pools = owned(&[&(0..50).collect::<Vec<_>>(), &[3, 4, 5, 6, 7]]);
        let exclude = owned(&[&[1, 2, 3], &[3, 4], &(0..40).collect::<Vec<_>>()]);
        let d = |q: usize| format!("query {q}");
        let a = sample_distinct(pools.view(), &[0, 1, 0], exclude.view(), &[10, 11, 12], 3, 7, &d).unwrap();
        let b = sample_distinct(pools.view(), &[0, 1, 0], exclude.view(), &[10, 11, 12], 3, 7, &d).unwrap();
        assert_eq!(a, b);
        for (q, row) in a.chunks(3).enumerate() {
            let mut s = row.to_vec();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 3, "distinct");
            for x in row {
                assert!(exclude.view().row(q).binary_search(x).is_err());
                assert!(pools.view().row([0, 1, 0][q]).contains(x));
            }
        }
        // Query 1 can only use 5, 6, 7.
        let mut q1 = a[3..6].to_vec();
        q1.sort();
        assert_eq!(q1, [5, 6, 7]);
        let err = sample_distinct(pools.view(), &[0, 1, 0], exclude.view(), &[10, 11, 12], 4, 7, &d).unwrap_err();
        assert_eq!(
            err.to_string(),
            "query 1: only 3 items can serve as negatives but 4 were requested (lower the number of evaluation negatives)"
        );
    }

    #[test]
    fn distinct_sampling_is_uniform_over_the_allowed_items() {
        // Dense exclusion path and sparse path both give each allowed item equal chance.
        for (pool_len, excl) in [(10u32, vec![0u32, 1, 2, 3, 4]), (1000, vec![5])] {
            let pools = owned(&[&(0..pool_len).collect::<Vec<_>>()]);
            let queries = 4000;
            let exclude = OwnedCsr::from_rows((0..queries).map(|_| excl.clone()));
            let keys: Vec<u64> = (0..queries as u64).collect();
            let out = sample_distinct(pools.view(), &vec![0; queries], exclude.view(), &keys, 2, 1, &|q| q.to_string()).unwrap();
            let mut counts = vec![0u32; pool_len as usize];
            for &x in &out {
                counts[x as usize] += 1;
            }
            let allowed = pool_len as usize - excl.len();
            let expect = (queries * 2) as f64 / allowed as f64;
            for (item, &c) in counts.iter().enumerate() {
                if excl.contains(&(item as u32)) {
                    assert_eq!(c, 0);
                } else {
                    assert!((c as f64 - expect).abs() < 6.0 * expect.sqrt() + 3.0, "item {item}: {c} vs {expect}");
                }
            }
        }
    }

    #[test]
    fn train_negatives_exclude_positives_and_vary_by_epoch() {
        // Two groups: group 0 (pool 0 = 0..20) with items 1,2,3; group 1 (pool 1 = 0..4) with 0,1,2.
        let offsets = [0u64, 3, 6];
        let items = [1, 2, 3, 2, 1, 0];
        let pools = owned(&[&(0..20).collect::<Vec<_>>(), &[0, 1, 2, 3]]);
        let excl = Csr::new(&offsets, &items).unwrap();
        let s = TrainNegativeSampler::new(&offsets, &[0, 1], pools.view(), excl, 4, 5).unwrap();
        let e0 = s.sample(0);
        assert_eq!(e0.len(), 24);
        assert!(e0[..12].iter().all(|x| ![1, 2, 3].contains(x) && *x < 20));
        assert!(e0[12..].iter().all(|&x| x == 3), "only item 3 is left for group 1");
        assert_eq!(e0, s.sample(0));
        assert_ne!(e0[..12], s.sample(1)[..12]);
        // A group with no possible negative is refused up front.
        let full = Csr::new(&[0, 4], &[3, 1, 2, 0]).unwrap();
        assert!(TrainNegativeSampler::new(&[0, 4], &[1], pools.view(), full, 1, 0).is_err());
    }

    #[test]
    fn train_negatives_do_not_depend_on_thread_count() {
        let mut rng = Rng::new(3);
        let groups = 3000;
        let mut offsets = vec![0u64];
        let mut items = Vec::new();
        for _ in 0..groups {
            for _ in 0..(1 + rng.below(9)) {
                items.push(rng.below(300) as u32);
            }
            offsets.push(items.len() as u64);
        }
        let pools = owned(&[&(0..300).collect::<Vec<_>>()]);
        let excl = Csr::new(&offsets, &items).unwrap();
        let s = TrainNegativeSampler::new(&offsets, &vec![0; groups], pools.view(), excl, 4, 11).unwrap();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| s.sample(2));
        let many = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| s.sample(2));
        assert_eq!(one, many);
    }
}

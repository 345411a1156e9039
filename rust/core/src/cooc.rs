//! Item co-occurrence: how many users have both item i and item j in their training history.
//!
//! Computed as the sparse product Hᵀ·H of the (binary) user-history matrix with a dense
//! per-thread accumulator per output row, so memory is the output plus one counter per item per
//! thread, whatever the history lengths.

use crate::error::{Error, Result};
use crate::negatives::Csr;
use rayon::prelude::*;

/// A symmetric item × item count matrix in CSR form, zero diagonal, rows sorted by column.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cooccurrence {
    pub n_items: usize,
    pub indptr: Vec<u64>,
    pub indices: Vec<u32>,
    pub counts: Vec<u32>,
}

impl Cooccurrence {
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    pub fn row(&self, i: usize) -> (&[u32], &[u32]) {
        self.view().row(i)
    }

    pub fn view(&self) -> CoocRef<'_> {
        CoocRef { indptr: &self.indptr, indices: &self.indices, counts: &self.counts }
    }

    pub fn get(&self, i: u32, j: u32) -> u32 {
        self.view().get(i, j)
    }
}

/// A co-occurrence matrix borrowed as its three CSR arrays (numpy's, from Python, without a copy).
#[derive(Clone, Copy, Debug)]
pub struct CoocRef<'a> {
    pub indptr: &'a [u64],
    pub indices: &'a [u32],
    pub counts: &'a [u32],
}

impl<'a> CoocRef<'a> {
    /// The arrays checked for shape: `n_items + 1` non-decreasing offsets ending at the length of
    /// the indices, one count per index, every index an item.
    pub fn new(indptr: &'a [u64], indices: &'a [u32], counts: &'a [u32]) -> Result<Self> {
        let n = indptr.len().saturating_sub(1);
        if indptr.first() != Some(&0)
            || *indptr.last().unwrap() as usize != indices.len()
            || counts.len() != indices.len()
            || indptr.windows(2).any(|w| w[0] > w[1])
        {
            return Err(Error::invalid("malformed co-occurrence matrix (CSR offsets, indices, counts)"));
        }
        if let Some(&bad) = indices.iter().find(|&&j| j as usize >= n) {
            return Err(Error::invalid(format!("co-occurrence column {bad} is out of range ({n} items)")));
        }
        Ok(CoocRef { indptr, indices, counts })
    }

    pub fn n_items(&self) -> usize {
        self.indptr.len() - 1
    }

    pub fn row(&self, i: usize) -> (&'a [u32], &'a [u32]) {
        let (a, b) = (self.indptr[i] as usize, self.indptr[i + 1] as usize);
        (&self.indices[a..b], &self.counts[a..b])
    }

    /// The count of the pair (`i`, `j`), 0 where it never occurs; `i` must be an item.
    pub fn get(&self, i: u32, j: u32) -> u32 {
        let (cols, counts) = self.row(i as usize);
        cols.binary_search(&j).map_or(0, |k| counts[k])
    }
}

/// Co-occurrence over the histories of the groups whose market is selected.
///
/// `histories` holds each group's training items in sequence order; `max_history` (if set) keeps
/// only the most recent items of longer histories, bounding the quadratic cost of heavy users.
pub fn cooccurrence(
    histories: Csr<'_>,
    group_market: &[u16],
    markets: &[u16],
    n_items: usize,
    max_history: Option<usize>,
) -> Result<Cooccurrence> {
    if group_market.len() != histories.rows() {
        return Err(Error::invalid("group_market and histories differ in length"));
    }
    if let Some(&bad) = histories.values.iter().find(|&&i| i as usize >= n_items) {
        return Err(Error::invalid(format!("item {bad} is out of range (n_items = {n_items})")));
    }
    let selected: Vec<usize> = (0..histories.rows())
        .filter(|&g| markets.contains(&group_market[g]))
        .collect();
    // Deduplicated (and optionally truncated) histories of the selected groups.
    let hist: Vec<Vec<u32>> = selected
        .par_iter()
        .map(|&g| {
            let row = histories.row(g);
            let row = match max_history {
                Some(m) if row.len() > m => &row[row.len() - m..],
                _ => row,
            };
            let mut v = row.to_vec();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    // Inverted index: item -> histories that contain it.
    let mut starts = vec![0u64; n_items + 1];
    for h in &hist {
        for &i in h {
            starts[i as usize + 1] += 1;
        }
    }
    for i in 0..n_items {
        starts[i + 1] += starts[i];
    }
    let mut fill = starts.clone();
    let mut inverted = vec![0u32; *starts.last().unwrap() as usize];
    for (h_index, h) in hist.iter().enumerate() {
        for &i in h {
            inverted[fill[i as usize] as usize] = h_index as u32;
            fill[i as usize] += 1;
        }
    }
    drop(fill);
    let rows: Vec<(Vec<u32>, Vec<u32>)> = (0..n_items)
        .into_par_iter()
        .with_min_len(64)
        .map_init(
            || (vec![0u32; n_items], Vec::<u32>::new()),
            |(acc, touched), i| {
                for &h in &inverted[starts[i] as usize..starts[i + 1] as usize] {
                    for &j in &hist[h as usize] {
                        if j as usize != i {
                            if acc[j as usize] == 0 {
                                touched.push(j);
                            }
                            acc[j as usize] += 1;
                        }
                    }
                }
                touched.sort_unstable();
                let counts: Vec<u32> = touched.iter().map(|&j| std::mem::take(&mut acc[j as usize])).collect();
                let cols = std::mem::take(touched);
                (cols, counts)
            },
        )
        .collect();
    let mut out = Cooccurrence { n_items, indptr: Vec::with_capacity(n_items + 1), ..Default::default() };
    out.indptr.push(0);
    for (cols, counts) in rows {
        out.indices.extend(cols);
        out.counts.extend(counts);
        out.indptr.push(out.indices.len() as u64);
    }
    Ok(out)
}

/// The co-occurrence baseline's scores: for each of `groups`, the sum over its history items
/// `h` (an item it holds twice counts twice) of `C[h, j]`, at the items `j` it is asked about:
/// `width` of them per group in `items` (row-major, `groups.len() × width`), or with `shared`
/// the same `width` items for every group (`items.len() == width`). The sums are of whole
/// counts, so they are exact in f64: the same numbers as the sparse product H·C. Only the asked
/// groups' histories are read (and checked).
pub fn history_scores(
    c: CoocRef<'_>,
    histories: Csr<'_>,
    groups: &[u32],
    items: &[u32],
    width: usize,
    shared: bool,
) -> Result<Vec<f64>> {
    let n = c.n_items();
    let expected = if shared { width } else { groups.len() * width };
    if items.len() != expected {
        return Err(Error::invalid(format!("{} items given for {} groups of {width}", items.len(), groups.len())));
    }
    if let Some(&g) = groups.iter().find(|&&g| g as usize >= histories.rows()) {
        return Err(Error::invalid(format!("group {g} is out of range ({} groups)", histories.rows())));
    }
    let asked_histories = groups.iter().flat_map(|&g| histories.row(g as usize));
    if let Some(&bad) = items.iter().chain(asked_histories).find(|&&i| i as usize >= n) {
        return Err(Error::invalid(format!("item {bad} is out of range (n_items = {n})")));
    }
    let mut out = vec![0f64; groups.len() * width];
    let score = |acc: &mut Vec<u64>, q: usize, row: &mut [f64]| {
        let history = histories.row(groups[q] as usize);
        for &h in history {
            let (cols, counts) = c.row(h as usize);
            for (&j, &k) in cols.iter().zip(counts) {
                acc[j as usize] += u64::from(k);
            }
        }
        let asked = if shared { items } else { &items[q * width..(q + 1) * width] };
        for (slot, &j) in row.iter_mut().zip(asked) {
            *slot = acc[j as usize] as f64;
        }
        for &h in history {
            for &j in c.row(h as usize).0 {
                acc[j as usize] = 0;
            }
        }
    };
    if width == 0 {
        return Ok(out);
    }
    if groups.len() < 64 {
        // a recommendation's handful of users: no thread hand-off
        let mut acc = vec![0u64; n];
        for (q, row) in out.chunks_mut(width).enumerate() {
            score(&mut acc, q, row);
        }
    } else {
        out.par_chunks_mut(width)
            .enumerate()
            .with_min_len(16)
            .for_each_init(|| vec![0u64; n], |acc, (q, row)| score(acc, q, row));
    }
    Ok(out)
}

/// Number of nonzero (i, j) pairs present in both matrices, given as CSR structure
/// (`indptr`, sorted `indices`) over the same items. Each unordered pair counts twice, as both
/// matrices are symmetric.
pub fn shared_pairs(a: (&[u64], &[u32]), b: (&[u64], &[u32])) -> Result<u64> {
    if a.0.len() != b.0.len() || a.0.is_empty() {
        return Err(Error::invalid("co-occurrence matrices over different item spaces"));
    }
    for (indptr, indices) in [a, b] {
        if *indptr.last().unwrap() as usize != indices.len() || indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::invalid("malformed CSR structure"));
        }
    }
    Ok((0..a.0.len() - 1)
        .into_par_iter()
        .map(|i| {
            let x = &a.1[a.0[i] as usize..a.0[i + 1] as usize];
            let y = &b.1[b.0[i] as usize..b.0[i + 1] as usize];
            let (mut p, mut q, mut n) = (0, 0, 0u64);
            while p < x.len() && q < y.len() {
                match x[p].cmp(&y[q]) {
                    std::cmp::Ordering::Less => p += 1,
                    std::cmp::Ordering::Greater => q += 1,
                    std::cmp::Ordering::Equal => {
                        n += 1;
                        p += 1;
                        q += 1;
                    }
                }
            }
            n
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::negatives::OwnedCsr;

    #[test]
    fn counts_by_hand() {
        // Three users: {0,1,2}, {1,2,2}, {0,3} in markets 0, 0, 1.
        let h = OwnedCsr::from_rows([vec![0, 1, 2], vec![1, 2, 2], vec![0, 3]]);
        let c = cooccurrence(h.view(), &[0, 0, 1], &[0, 1], 4, None).unwrap();
        assert_eq!(c.get(1, 2), 2);
        assert_eq!(c.get(2, 1), 2);
        assert_eq!(c.get(0, 1), 1);
        assert_eq!(c.get(0, 3), 1);
        assert_eq!(c.get(1, 1), 0, "zero diagonal even with a repeated item");
        assert_eq!(c.get(1, 3), 0);
        assert_eq!(c.nnz(), 8);
        // Market 0 alone has no (0, 3) pair.
        let c0 = cooccurrence(h.view(), &[0, 0, 1], &[0], 4, None).unwrap();
        assert_eq!(c0.get(0, 3), 0);
        assert_eq!(shared_pairs((&c.indptr, &c.indices), (&c0.indptr, &c0.indices)).unwrap(), 6);
        // Truncation to the last 2 items: user 0 keeps {1, 2}, user 1 keeps {2}, user 2 {0, 3}.
        let t = cooccurrence(h.view(), &[0, 0, 1], &[0, 1], 4, Some(2)).unwrap();
        assert_eq!(t.get(0, 1), 0);
        assert_eq!(t.get(1, 2), 1);
    }

    #[test]
    fn matches_a_brute_force_count() {
        let mut rng = crate::rng::Rng::new(4);
        let rows: Vec<Vec<u32>> = (0..300)
            .map(|_| (0..rng.below(12)).map(|_| rng.below(60) as u32).collect())
            .collect();
        let h = OwnedCsr::from_rows(rows.clone());
        let c = cooccurrence(h.view(), &vec![0; 300], &[0], 60, None).unwrap();
        let mut brute = vec![vec![0u32; 60]; 60];
        for r in &rows {
            let mut s = r.clone();
            s.sort();
            s.dedup();
            for &i in &s {
                for &j in &s {
                    if i != j {
                        brute[i as usize][j as usize] += 1;
                    }
                }
            }
        }
        for i in 0..60 {
            for j in 0..60 {
                assert_eq!(c.get(i, j), brute[i as usize][j as usize]);
            }
        }
    }

    #[test]
    fn history_scores_by_hand() {
        // The matrix of counts_by_hand; group 1's history {1, 2, 2} holds item 2 twice.
        let h = OwnedCsr::from_rows([vec![0, 1, 2], vec![1, 2, 2], vec![0, 3]]);
        let c = cooccurrence(h.view(), &[0, 0, 1], &[0, 1], 4, None).unwrap();
        // group 1 at items 0, 3, 1: C[1,0] + 2 C[2,0] = 1 + 2 = 3; 0; C[1,1] + 2 C[2,1] = 0 + 4
        let s = history_scores(c.view(), h.view(), &[1, 2], &[0, 3, 1, 3, 0, 1], 3, false).unwrap();
        // group 2 {0, 3} at items 3, 0, 1: C[0,3] = 1, C[3,0] = 1, C[0,1] = 1
        assert_eq!(s, vec![3.0, 0.0, 4.0, 1.0, 1.0, 1.0]);
        let all = history_scores(c.view(), h.view(), &[1, 2], &[0, 1, 2, 3], 4, true).unwrap();
        assert_eq!(all, vec![3.0, 4.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        assert!(history_scores(c.view(), h.view(), &[3], &[0], 1, true).is_err());
        assert!(history_scores(c.view(), h.view(), &[0], &[4], 1, true).is_err());
        assert!(history_scores(c.view(), h.view(), &[0, 1], &[0], 1, false).is_err());
        // a history item beyond the matrix is an error where that history is read, only there
        let wide = OwnedCsr::from_rows([vec![0, 1], vec![9]]);
        assert!(history_scores(c.view(), wide.view(), &[1], &[0], 1, true).is_err());
        // group 0 {0, 1} at item 2: C[0,2] + C[1,2] = 1 + 2
        assert_eq!(history_scores(c.view(), wide.view(), &[0], &[2], 1, true).unwrap(), vec![3.0]);
    }

    #[test]
    fn history_scores_match_a_brute_force_sum_serial_and_parallel() {
        let mut rng = crate::rng::Rng::new(9);
        let rows: Vec<Vec<u32>> = (0..400)
            .map(|_| (0..rng.below(10)).map(|_| rng.below(50) as u32).collect())
            .collect();
        let h = OwnedCsr::from_rows(rows.clone());
        let c = cooccurrence(h.view(), &vec![0; 400], &[0], 50, None).unwrap();
        for n_groups in [5usize, 300] {
            let groups: Vec<u32> = (0..n_groups).map(|_| rng.below(400) as u32).collect();
            let items: Vec<u32> = (0..n_groups * 7).map(|_| rng.below(50) as u32).collect();
            let got = history_scores(c.view(), h.view(), &groups, &items, 7, false).unwrap();
            for (q, &g) in groups.iter().enumerate() {
                for k in 0..7 {
                    let j = items[q * 7 + k];
                    let want: u32 = rows[g as usize].iter().map(|&i| c.get(i, j)).sum();
                    assert_eq!(got[q * 7 + k], f64::from(want), "group {g}, item {j}");
                }
            }
        }
    }
}

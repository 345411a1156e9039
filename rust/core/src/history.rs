//! Padded history matrices for sequence models (ACMR): each selected row of a CSR of histories
//! (items in time order) becomes one fixed-width row, left-aligned, padded with a pad item.
//!
//! Histories longer than the width are cut by a rule:
//! * `Recent`: the last `width` items;
//! * `Random`: a uniform random subset of `width` items, keyed by (seed, row key) so that a row
//!   gets the same subset whatever else is built with it (ACMR's original sampled at random);
//! * `Cooc`: the `width` items that co-occur most with the rest of the history (the sum of their
//!   co-occurrence counts with the other positions), ties to the more recent item.
//!
//! Kept items always stay in their time order.
//!
//! A training row must not see its own positive item in its history (the model would learn to
//! look the candidate up), so each row may name one position of its history to leave out before
//! the width and the rule apply; the random rule then keys on (key, left-out position) so the
//! rows of one user draw different subsets.

use crate::cooc::CoocRef;
use crate::error::{Error, Result};
use crate::negatives::Csr;
use crate::rng::Rng;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    Recent,
    Random,
    Cooc,
}

impl std::str::FromStr for Truncation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "recent" => Ok(Truncation::Recent),
            "random" => Ok(Truncation::Random),
            "cooc" => Ok(Truncation::Cooc),
            other => Err(Error::invalid(format!("unknown truncation rule {other:?} (expected recent, random or cooc)"))),
        }
    }
}

/// Position value meaning "leave nothing out" in `leave_out`.
pub const KEEP_ALL: u32 = u32::MAX;

/// Padded histories of `rows` (indices into `histories`): `rows.len() × width` items and the
/// length kept for each row. `keys[r]` keys the random rule for row `r`; `cooc` is required by
/// the co-occurrence rule (borrowed: numpy's arrays from Python, without a copy), and every
/// item of a history longer than `width` must be one of its rows; `leave_out[r]`, when given,
/// is a position of row `r`'s history to drop first ([`KEEP_ALL`] for none).
#[allow(clippy::too_many_arguments)]
pub fn padded_histories(
    histories: Csr<'_>,
    rows: &[u32],
    width: usize,
    pad: u32,
    rule: Truncation,
    seed: u64,
    keys: &[u64],
    cooc: Option<CoocRef<'_>>,
    leave_out: Option<&[u32]>,
) -> Result<(Vec<u32>, Vec<u32>)> {
    if width == 0 {
        return Err(Error::invalid("history width must be at least 1"));
    }
    if keys.len() != rows.len() {
        return Err(Error::invalid("rows and keys differ in length"));
    }
    if let Some(&bad) = rows.iter().find(|&&r| r as usize >= histories.rows()) {
        return Err(Error::invalid(format!("history row {bad} does not exist ({} rows)", histories.rows())));
    }
    if rule == Truncation::Cooc {
        let Some(c) = cooc else {
            return Err(Error::invalid("the cooc truncation rule needs co-occurrence counts"));
        };
        // only histories longer than the width can be truncated and read it (most are shorter)
        let long = rows.iter().filter(|&&r| histories.row(r as usize).len() > width);
        if let Some(&bad) = long.flat_map(|&r| histories.row(r as usize)).find(|&&i| i as usize >= c.n_items()) {
            return Err(Error::invalid(format!(
                "history item {bad} has no row in the co-occurrence matrix ({} items)",
                c.n_items()
            )));
        }
    }
    if let Some(skip) = leave_out {
        if skip.len() != rows.len() {
            return Err(Error::invalid("rows and leave_out differ in length"));
        }
        if let Some(r) = (0..rows.len()).find(|&r| skip[r] != KEEP_ALL && skip[r] as usize >= histories.row(rows[r] as usize).len()) {
            return Err(Error::invalid(format!(
                "leave_out position {} is past the end of history row {} ({} items)",
                skip[r], rows[r], histories.row(rows[r] as usize).len()
            )));
        }
    }
    let mut out = vec![pad; rows.len() * width];
    let mut lengths = vec![0u32; rows.len()];
    out.par_chunks_mut(width).zip(lengths.par_iter_mut()).enumerate().for_each(|(r, (slot, len))| {
        let full = histories.row(rows[r] as usize);
        let skip = leave_out.map_or(KEEP_ALL, |s| s[r]);
        let kept = full.len() - usize::from(skip != KEEP_ALL);
        if kept <= width {
            // No rule to apply: the history (less the left-out item) straight into its slot,
            // without building it first (most rows: the median history is far below the width).
            if skip == KEEP_ALL {
                slot[..kept].copy_from_slice(full);
            } else {
                let p = skip as usize;
                slot[..p].copy_from_slice(&full[..p]);
                slot[p..kept].copy_from_slice(&full[p + 1..]);
            }
            *len = kept as u32;
            return;
        }
        let without: Vec<u32>;
        let (hist, key): (&[u32], &[u64]) = if skip == KEEP_ALL {
            (full, &[keys[r]])
        } else {
            let p = skip as usize;
            without = [&full[..p], &full[p + 1..]].concat();
            (&without[..], &[keys[r], skip as u64])
        };
        let keep = kept_positions(hist, width, rule, seed, key, cooc);
        for (s, &p) in slot.iter_mut().zip(&keep) {
            *s = hist[p];
        }
        *len = width as u32;
    });
    Ok((out, lengths))
}

/// Positions (ascending) of the `width` items a rule keeps from a longer history.
fn kept_positions(hist: &[u32], width: usize, rule: Truncation, seed: u64, key: &[u64], cooc: Option<CoocRef<'_>>) -> Vec<usize> {
    let n = hist.len();
    let mut keep: Vec<usize> = match rule {
        Truncation::Recent => (n - width..n).collect(),
        Truncation::Random => {
            // Partial Fisher–Yates over the positions.
            let mut rng = Rng::for_stream(seed, key);
            let mut pos: Vec<usize> = (0..n).collect();
            for i in 0..width {
                let j = i + rng.below((n - i) as u64) as usize;
                pos.swap(i, j);
            }
            pos.truncate(width);
            pos
        }
        Truncation::Cooc => {
            let c = cooc.expect("checked by the caller");
            let score = |p: usize| -> u64 {
                hist.iter().enumerate().filter(|&(q, _)| q != p).map(|(_, &b)| c.get(hist[p], b) as u64).sum()
            };
            let mut scored: Vec<(u64, usize)> = (0..n).map(|p| (score(p), p)).collect();
            // Highest score first; ties to the more recent position.
            scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
            scored.into_iter().take(width).map(|(_, p)| p).collect()
        }
    };
    keep.sort_unstable();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cooc::Cooccurrence;
    use crate::negatives::OwnedCsr;

    fn csr() -> OwnedCsr {
        OwnedCsr::from_rows([vec![5, 6, 7, 8, 9], vec![1, 2], vec![]])
    }

    #[test]
    fn short_histories_are_copied_and_padded() {
        let h = csr();
        let (out, len) = padded_histories(h.view(), &[1, 2], 3, 99, Truncation::Recent, 0, &[0, 0], None, None).unwrap();
        assert_eq!(out, [1, 2, 99, 99, 99, 99]);
        assert_eq!(len, [2, 0]);
    }

    #[test]
    fn recent_keeps_the_last_items_in_order() {
        let h = csr();
        let (out, len) = padded_histories(h.view(), &[0], 3, 99, Truncation::Recent, 0, &[0], None, None).unwrap();
        assert_eq!(out, [7, 8, 9]);
        assert_eq!(len, [3]);
    }

    #[test]
    fn random_keeps_a_seeded_subset_in_time_order() {
        let h = csr();
        let (a, _) = padded_histories(h.view(), &[0, 0], 3, 99, Truncation::Random, 1, &[10, 10], None, None).unwrap();
        assert_eq!(a[..3], a[3..]); // same key, same subset
        assert!(a[..3].windows(2).all(|w| w[0] < w[1]), "time order kept: {a:?}");
        let mut seen = std::collections::HashSet::new();
        for key in 0..200u64 {
            let (b, _) = padded_histories(h.view(), &[0], 3, 99, Truncation::Random, 1, &[key], None, None).unwrap();
            seen.insert(b);
        }
        assert_eq!(seen.len(), 10, "every 3-subset of 5 items appears"); // C(5,3) = 10
    }

    #[test]
    fn cooc_keeps_the_items_that_co_occur_most_with_the_rest() {
        // Items 5 and 9 co-occur 3 times; 7 and 9 once; the others never.
        let c = Cooccurrence {
            n_items: 10,
            indptr: vec![0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 4],
            indices: vec![9, 9, 5, 7],
            counts: vec![3, 1, 3, 1],
        };
        let h = csr();
        let (out, _) = padded_histories(h.view(), &[0], 3, 99, Truncation::Cooc, 0, &[0], Some(c.view()), None).unwrap();
        // scores: 5→3, 6→0, 7→1, 8→0, 9→4: keep 9, 5, 7 in time order
        assert_eq!(out, [5, 7, 9]);
        let (two, _) = padded_histories(h.view(), &[0], 4, 99, Truncation::Cooc, 0, &[0], Some(c.view()), None).unwrap();
        // the fourth slot is a tie between 6 and 8 (both 0): the more recent, 8, wins
        assert_eq!(two, [5, 7, 8, 9]);
    }

    #[test]
    fn a_left_out_position_is_dropped_before_the_rule() {
        let h = csr();
        let (out, len) =
            padded_histories(h.view(), &[0, 0, 1], 3, 99, Truncation::Recent, 0, &[0, 0, 0], None, Some(&[4, 1, KEEP_ALL]))
                .unwrap();
        // row 0 without 9 → 6 7 8 (the last three); without 6 → 7 8 9; row 1 untouched
        assert_eq!(out, [6, 7, 8, 7, 8, 9, 1, 2, 99]);
        assert_eq!(len, [3, 3, 2]);
        let (short, len) =
            padded_histories(h.view(), &[1], 3, 99, Truncation::Recent, 0, &[0], None, Some(&[0])).unwrap();
        assert_eq!((short, len), (vec![2, 99, 99], vec![1]));
        // the random rule draws per left-out position: never the left-out item, in time order
        for p in 0..5u32 {
            let (r, _) = padded_histories(h.view(), &[0], 3, 99, Truncation::Random, 5, &[7], None, Some(&[p])).unwrap();
            assert!(!r.contains(&(5 + p)) && r.windows(2).all(|w| w[0] < w[1]), "{p}: {r:?}");
        }
        assert!(padded_histories(h.view(), &[1], 3, 99, Truncation::Recent, 0, &[0], None, Some(&[2])).is_err());
        assert!(padded_histories(h.view(), &[1], 3, 99, Truncation::Recent, 0, &[0], None, Some(&[])).is_err());
    }

    #[test]
    fn bad_arguments() {
        let h = csr();
        assert!(padded_histories(h.view(), &[3], 3, 99, Truncation::Recent, 0, &[0], None, None).is_err());
        assert!(padded_histories(h.view(), &[0], 0, 99, Truncation::Recent, 0, &[0], None, None).is_err());
        assert!(padded_histories(h.view(), &[0], 3, 99, Truncation::Cooc, 0, &[0], None, None).is_err());
        // a history the rule truncates (row 0, five items) holds items 5..9: a matrix of 9 items lacks 9
        let c = Cooccurrence { n_items: 9, indptr: vec![0; 10], indices: vec![], counts: vec![] };
        let e = padded_histories(h.view(), &[0], 3, 99, Truncation::Cooc, 0, &[0], Some(c.view()), None).unwrap_err();
        assert!(e.to_string().contains("history item 9 has no row"), "{e}");
        // a history the rule leaves whole does not read it
        assert!(padded_histories(h.view(), &[1], 3, 99, Truncation::Cooc, 0, &[0], Some(c.view()), None).is_ok());
        assert!("oldest".parse::<Truncation>().is_err());
    }
}

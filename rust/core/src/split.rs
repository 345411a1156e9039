//! Leave-one-out splits per (market, user).
//!
//! Every (market, user) pair is a *group*. Its rows are put in sequence order; the last row is
//! the test interaction, the one before it the validation interaction, the rest training. The
//! order is either temporal (protocol `forec`) or a seeded random permutation (protocol `acmr`).
//!
//! Temporal order sorts by date; rows on the same date keep their order in the input file
//! (a later line counts as a later interaction). The input order is the only information the
//! files carry beyond the date, and a stable rule makes the split reproducible.
//!
//! Random order is keyed by the *original* market and user ids (through stable hashes), so a
//! user's split does not change when other markets are added to or removed from the input.

use crate::error::{check_same_len, Error, Result};
use crate::rng::{derive_seed, Rng};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// By date; same-date rows in input order.
    Temporal,
    /// A random permutation per group from the seed.
    Random { seed: u64 },
}

#[derive(Clone, Copy, Debug)]
pub struct SplitOptions {
    pub order: Order,
    /// Drop repeated (market, user, item) rows, keeping the first in input order. Off by default:
    /// with duplicates, the held-out item can also appear in the user's training history.
    pub dedup: bool,
    /// Groups with fewer rows than this are training-only (never evaluated). At least 3.
    pub min_interactions: usize,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            order: Order::Temporal,
            dedup: false,
            min_interactions: 3,
        }
    }
}

/// The result of a split, as row indices into the input columns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    pub group_market: Vec<u16>,
    pub group_user: Vec<u32>,
    /// Training rows of all groups, each group's rows in sequence order (oldest first).
    pub train_rows: Vec<u32>,
    /// CSR offsets into `train_rows`, one past per group (`len = groups + 1`).
    pub train_offsets: Vec<u64>,
    /// Groups that have a validation and a test interaction, ascending.
    pub heldout_groups: Vec<u32>,
    pub valid_rows: Vec<u32>,
    pub test_rows: Vec<u32>,
    /// Rows removed as repeated (market, user, item) when `dedup` was on.
    pub duplicates_dropped: u64,
}

impl Split {
    pub fn groups(&self) -> usize {
        self.group_user.len()
    }
}

/// Row indices sorted by (market, user), stable (ascending row within a group).
fn rows_by_group(market: &[u16], user: &[u32]) -> Vec<u32> {
    let n_users = user.iter().copied().max().map_or(0, |u| u as usize + 1);
    let n_markets = market.iter().copied().max().map_or(0, |m| m as usize + 1);
    // Counting sort by user, then a stable counting sort by market.
    let mut starts = vec![0usize; n_users + 1];
    for &u in user {
        starts[u as usize + 1] += 1;
    }
    for i in 0..n_users {
        starts[i + 1] += starts[i];
    }
    let mut by_user = vec![0u32; user.len()];
    for (row, &u) in user.iter().enumerate() {
        by_user[starts[u as usize]] = row as u32;
        starts[u as usize] += 1;
    }
    drop(starts);
    let mut mstarts = vec![0usize; n_markets + 1];
    for &m in market {
        mstarts[m as usize + 1] += 1;
    }
    for i in 0..n_markets {
        mstarts[i + 1] += mstarts[i];
    }
    let mut out = vec![0u32; user.len()];
    for &row in &by_user {
        let m = market[row as usize] as usize;
        out[mstarts[m]] = row;
        mstarts[m] += 1;
    }
    out
}

/// Removes later repeats of an item from a group's rows (ascending), returning the kept count;
/// kept rows stay ascending at the front of the slice.
fn dedup_group(rows: &mut [u32], item: &[u32], scratch: &mut Vec<(u32, u32)>) -> usize {
    scratch.clear();
    scratch.extend(rows.iter().map(|&r| (item[r as usize], r)));
    scratch.sort_unstable();
    scratch.dedup_by_key(|p| p.0);
    let mut kept: Vec<u32> = scratch.iter().map(|p| p.1).collect();
    kept.sort_unstable();
    rows[..kept.len()].copy_from_slice(&kept);
    kept.len()
}

/// Leave-one-out split. `market_keys[m]` and `user_keys[u]` are stable hashes of the original
/// market and user ids (used only by random order).
pub fn leave_one_out(
    market: &[u16],
    user: &[u32],
    item: &[u32],
    day: &[i32],
    market_keys: &[u64],
    user_keys: &[u64],
    options: SplitOptions,
) -> Result<Split> {
    check_same_len(
        "leave_one_out",
        &[("market", market.len()), ("user", user.len()), ("item", item.len()), ("day", day.len())],
    )?;
    if options.min_interactions < 3 {
        return Err(Error::invalid(
            "min_interactions must be at least 3 (one training, one validation and one test row)",
        ));
    }
    if let Order::Random { .. } = options.order {
        let need_u = user.iter().copied().max().map_or(0, |u| u as usize + 1);
        let need_m = market.iter().copied().max().map_or(0, |m| m as usize + 1);
        if user_keys.len() < need_u || market_keys.len() < need_m {
            return Err(Error::invalid("random order needs a key for every user and market"));
        }
    }
    if user.len() >= u32::MAX as usize {
        return Err(Error::invalid("more than 2^32-1 rows"));
    }
    let mut order = rows_by_group(market, user);
    let same_group = |a: &u32, b: &u32| {
        market[*a as usize] == market[*b as usize] && user[*a as usize] == user[*b as usize]
    };
    let kept: Vec<usize> = order
        .par_chunk_by_mut(same_group)
        .map_init(Vec::new, |scratch, rows| {
            let n = if options.dedup { dedup_group(rows, item, scratch) } else { rows.len() };
            let rows = &mut rows[..n];
            match options.order {
                Order::Temporal => rows.sort_by_key(|&r| (day[r as usize], r)),
                Order::Random { seed } => {
                    let r0 = rows[0] as usize;
                    let key_m = market_keys[market[r0] as usize];
                    let key_u = user_keys[user[r0] as usize];
                    Rng::new(derive_seed(seed, &[key_m, key_u])).shuffle(rows);
                }
            }
            n
        })
        .collect();

    let groups = kept.len();
    let mut split = Split {
        group_market: Vec::with_capacity(groups),
        group_user: Vec::with_capacity(groups),
        train_rows: Vec::with_capacity(order.len()),
        train_offsets: Vec::with_capacity(groups + 1),
        ..Default::default()
    };
    split.train_offsets.push(0);
    let mut pos = 0;
    let mut total_kept = 0usize;
    for (g, &n_kept) in kept.iter().enumerate() {
        let first = order[pos] as usize;
        let size = {
            let mut s = 1;
            while pos + s < order.len() && same_group(&order[pos], &order[pos + s]) {
                s += 1;
            }
            s
        };
        let rows = &order[pos..pos + n_kept];
        split.group_market.push(market[first]);
        split.group_user.push(user[first]);
        if n_kept >= options.min_interactions {
            split.train_rows.extend_from_slice(&rows[..n_kept - 2]);
            split.valid_rows.push(rows[n_kept - 2]);
            split.test_rows.push(rows[n_kept - 1]);
            split.heldout_groups.push(g as u32);
        } else {
            split.train_rows.extend_from_slice(rows);
        }
        split.train_offsets.push(split.train_rows.len() as u64);
        total_kept += n_kept;
        pos += size;
    }
    split.duplicates_dropped = (order.len() - total_kept) as u64;
    Ok(split)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporal(dedup: bool) -> SplitOptions {
        SplitOptions { order: Order::Temporal, dedup, min_interactions: 3 }
    }

    #[test]
    fn temporal_split_by_hand() {
        // rows:      0  1  2  3  4  5  6
        let market = [0, 0, 0, 0, 1, 0, 1];
        let user = [5, 5, 5, 5, 5, 2, 5];
        let item = [1, 2, 3, 4, 1, 9, 2];
        let day = [30, 10, 20, 20, 1, 5, 2];
        let s = leave_one_out(&market, &user, &item, &day, &[], &[], temporal(false)).unwrap();
        // Groups by (market, user): (0,2), (0,5), (1,5).
        assert_eq!(s.group_market, [0, 0, 1]);
        assert_eq!(s.group_user, [2, 5, 5]);
        // (0,5) by date: row1 (10), row2 (20), row3 (20, later line), row0 (30).
        assert_eq!(s.heldout_groups, [1]);
        assert_eq!(s.valid_rows, [3]);
        assert_eq!(s.test_rows, [0]);
        // Small groups are training-only.
        assert_eq!(s.train_rows, [5, 1, 2, 4, 6]);
        assert_eq!(s.train_offsets, [0, 1, 3, 5]);
    }

    #[test]
    fn dedup_keeps_first_occurrence() {
        let market = [0; 5];
        let user = [0; 5];
        let item = [7, 8, 7, 9, 10];
        let day = [1, 2, 3, 4, 5];
        let s = leave_one_out(&market, &user, &item, &day, &[], &[], temporal(true)).unwrap();
        assert_eq!(s.duplicates_dropped, 1);
        assert_eq!(s.train_rows, [0, 1]);
        assert_eq!((s.valid_rows[0], s.test_rows[0]), (3, 4));
        let s = leave_one_out(&market, &user, &item, &day, &[], &[], temporal(false)).unwrap();
        assert_eq!(s.train_rows, [0, 1, 2]);
    }

    #[test]
    fn random_order_is_seeded_and_keyed_by_ids() {
        let n = 40;
        let market = vec![0u16; n];
        let user = vec![0u32; n];
        let item: Vec<u32> = (0..n as u32).collect();
        let day = vec![0; n];
        let opts = |seed| SplitOptions { order: Order::Random { seed }, dedup: false, min_interactions: 3 };
        let a = leave_one_out(&market, &user, &item, &day, &[11], &[99], opts(1)).unwrap();
        let b = leave_one_out(&market, &user, &item, &day, &[11], &[99], opts(1)).unwrap();
        let c = leave_one_out(&market, &user, &item, &day, &[11], &[99], opts(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.test_rows, c.test_rows);
        let mut all: Vec<u32> = a.train_rows.clone();
        all.extend(&a.valid_rows);
        all.extend(&a.test_rows);
        all.sort();
        assert_eq!(all, item);
        // A different user key gives a different permutation.
        let d = leave_one_out(&market, &user, &item, &day, &[11], &[98], opts(1)).unwrap();
        assert_ne!(a.train_rows, d.train_rows);
    }

    #[test]
    fn every_row_lands_exactly_once() {
        let mut rng = Rng::new(9);
        let n = 20_000;
        let market: Vec<u16> = (0..n).map(|_| rng.below(3) as u16).collect();
        let user: Vec<u32> = (0..n).map(|_| rng.below(2000) as u32).collect();
        let item: Vec<u32> = (0..n).map(|_| rng.below(500) as u32).collect();
        let day: Vec<i32> = (0..n).map(|_| rng.below(50) as i32).collect();
        let s = leave_one_out(&market, &user, &item, &day, &[], &[], temporal(false)).unwrap();
        let mut seen = vec![0u8; n];
        for &r in s.train_rows.iter().chain(&s.valid_rows).chain(&s.test_rows) {
            seen[r as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c == 1));
        for (k, &g) in s.heldout_groups.iter().enumerate() {
            let g = g as usize;
            let (v, t) = (s.valid_rows[k] as usize, s.test_rows[k] as usize);
            for &r in &s.train_rows[s.train_offsets[g] as usize..s.train_offsets[g + 1] as usize] {
                assert!((day[r as usize], r) < (day[v], v as u32));
                assert_eq!((market[r as usize], user[r as usize]), (s.group_market[g], s.group_user[g]));
            }
            assert!((day[v], v) < (day[t], t));
        }
    }
}

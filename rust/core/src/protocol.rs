//! Evaluation protocols: which items may be evaluation negatives for a held-out interaction.
//!
//! The candidates of every held-out interaction are sampled once, at `prepare` time, and stored,
//! so every model is evaluated on identical lists. Row 0 of each candidate list is the positive.

use crate::error::{Error, Result};
use crate::negatives::{check_available, fill_distinct, Csr, OwnedCsr};
use crate::rng::derive_seed;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// FOREC: temporal leave-one-out; negatives from the user's market, never any positive of
    /// the user in that market.
    Forec,
    /// ACMR: random leave-one-out; negatives from all items of all loaded markets, never a
    /// training item of the user nor the held-out item.
    Acmr,
}

impl std::str::FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "forec" => Ok(Protocol::Forec),
            "acmr" => Ok(Protocol::Acmr),
            other => Err(Error::invalid(format!("unknown protocol {other:?} (expected forec or acmr)"))),
        }
    }
}

/// Distinct items of each market (sorted), as a CSR with one row per market.
pub fn market_items(market: &[u16], item: &[u32], n_markets: usize) -> OwnedCsr {
    let n_items = item.iter().copied().max().map_or(0, |i| i as usize + 1);
    // One pass over the rows into a market × item presence table (n_markets·n_items bits).
    let mut seen = vec![false; n_markets * n_items];
    for (&m, &it) in market.iter().zip(item) {
        if (m as usize) < n_markets {
            seen[m as usize * n_items + it as usize] = true;
        }
    }
    OwnedCsr::from_rows((0..n_markets).map(|m| {
        let row = &seen[m * n_items..(m + 1) * n_items];
        (0..n_items as u32).filter(|&i| row[i as usize]).collect::<Vec<u32>>()
    }))
}

/// Stored candidates for validation and test: `heldout × (1 + negatives)` each, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    pub valid: Vec<u32>,
    pub test: Vec<u32>,
    pub width: usize,
}

/// What the candidate sampler needs about the split.
pub struct HeldOut<'a> {
    pub group_market: &'a [u16],
    pub group_user: &'a [u32],
    /// Training items per group (CSR over all groups).
    pub train_items: Csr<'a>,
    pub heldout_groups: &'a [u32],
    pub valid_item: &'a [u32],
    pub test_item: &'a [u32],
}

const STREAM_VALID: u64 = 1;
const STREAM_TEST: u64 = 2;

/// Samples the evaluation candidates of every held-out group under `protocol`.
#[allow(clippy::too_many_arguments)]
pub fn eval_candidates(
    held: &HeldOut<'_>,
    market_items: Csr<'_>,
    protocol: Protocol,
    negatives: usize,
    seed: u64,
    market_keys: &[u64],
    user_keys: &[u64],
    describe_group: &(dyn Fn(usize) -> String + Sync),
) -> Result<Candidates> {
    let q = held.heldout_groups.len();
    if held.valid_item.len() != q || held.test_item.len() != q {
        return Err(Error::invalid("heldout_groups, valid_item and test_item differ in length"));
    }
    let groups = held.group_market.len();
    if held.train_items.rows() != groups || held.group_user.len() != groups {
        return Err(Error::invalid("group arrays and train_items differ in length"));
    }
    if let Some(&g) = held.heldout_groups.iter().find(|&&g| g as usize >= groups) {
        return Err(Error::invalid(format!("held-out group {g} does not exist")));
    }
    let n_markets = market_items.rows();
    if let Some(&m) = held.group_market.iter().find(|&&m| m as usize >= n_markets) {
        return Err(Error::invalid(format!("market {m} has no item list")));
    }
    if market_keys.len() < n_markets
        || held.group_user.iter().any(|&u| u as usize >= user_keys.len())
    {
        return Err(Error::invalid("a market or user has no stable key"));
    }
    // Pools: one per market (forec) or one shared (acmr).
    let (pools, pool_of_market): (OwnedCsr, Vec<u32>) = match protocol {
        Protocol::Forec => (
            OwnedCsr { offsets: market_items.offsets.to_vec(), values: market_items.values.to_vec() },
            (0..n_markets as u32).collect(),
        ),
        Protocol::Acmr => {
            let mut all = market_items.values.to_vec();
            all.sort_unstable();
            all.dedup();
            (OwnedCsr::from_rows([all]), vec![0; n_markets])
        }
    };
    let query_pool: Vec<u32> = held
        .heldout_groups
        .iter()
        .map(|&g| pool_of_market[held.group_market[g as usize] as usize])
        .collect();
    // Each query's excluded items, sorted and unique: its training items plus the held-out
    // item(s) the protocol names (forec: all the user's positives; acmr: the training items and
    // this list's own held-out item). Built flat, one block of queries at a time, so the
    // exclusions never add more than a block's worth to the candidate matrices' memory.
    let exclusion = |range: std::ops::Range<usize>, held_out: &[&[u32]]| -> OwnedCsr {
        let train = |k: usize| held.train_items.row(held.heldout_groups[k] as usize);
        OwnedCsr::build_par(
            range.len(),
            |i| train(range.start + i).len() + held_out.len(),
            |i, row| {
                let k = range.start + i;
                let t = train(k);
                row[..t.len()].copy_from_slice(t);
                for (j, items) in held_out.iter().enumerate() {
                    row[t.len() + j] = items[k];
                }
                row.sort_unstable();
                dedup_sorted(row)
            },
        )
    };
    let key = |k: usize, stream: u64| -> u64 {
        let g = held.heldout_groups[k] as usize;
        derive_seed(stream, &[market_keys[held.group_market[g] as usize], user_keys[held.group_user[g] as usize]])
    };
    let width = negatives
        .checked_add(1)
        .filter(|w| w.checked_mul(q).is_some())
        .ok_or_else(|| Error::invalid(format!("{negatives} evaluation negatives per query is too many")))?;
    let largest_pool = query_pool.iter().map(|&p| pools.view().row(p as usize).len()).max().unwrap_or(0);
    let assemble = |positives: &[u32], held_out: &[&[u32]], stream: u64| -> Result<Vec<u32>> {
        if q > 0 && negatives >= largest_pool {
            // No query can have that many negatives (its own held-out item is in its pool and
            // excluded): report the first one, exactly as below, before allocating a candidate
            // matrix that may not fit in memory.
            let excl = exclusion(0..1, held_out);
            let describe = |i: usize| describe_group(held.heldout_groups[i] as usize);
            check_available(pools.view(), &query_pool[..1], excl.view(), negatives, &describe)?;
        }
        let mut out = vec![0u32; q * width];
        out.par_chunks_mut(width).zip(positives.par_iter()).for_each(|(row, &p)| row[0] = p);
        for start in (0..q).step_by(QUERY_BLOCK) {
            let range = start..(start + QUERY_BLOCK).min(q);
            let excl = exclusion(range.clone(), held_out);
            let pools_of = &query_pool[range.clone()];
            let describe = |i: usize| describe_group(held.heldout_groups[start + i] as usize);
            check_available(pools.view(), pools_of, excl.view(), negatives, &describe)?;
            let keys: Vec<u64> = range.clone().map(|k| key(k, stream)).collect();
            // Negatives go straight into columns 1.. of the candidate rows (no second copy).
            let rows = &mut out[range.start * width..range.end * width];
            fill_distinct(rows, width, 1, pools.view(), pools_of, excl.view(), &keys, negatives, seed);
        }
        Ok(out)
    };
    let (valid, test) = match protocol {
        Protocol::Forec => {
            let both: [&[u32]; 2] = [held.valid_item, held.test_item];
            (assemble(held.valid_item, &both, STREAM_VALID)?, assemble(held.test_item, &both, STREAM_TEST)?)
        }
        Protocol::Acmr => (
            assemble(held.valid_item, &[held.valid_item], STREAM_VALID)?,
            assemble(held.test_item, &[held.test_item], STREAM_TEST)?,
        ),
    };
    Ok(Candidates { valid, test, width })
}

/// Queries whose exclusions are built at once while sampling candidates.
const QUERY_BLOCK: usize = 1 << 16;

/// Removes consecutive repeats from sorted `row` in place; returns the number of values kept.
fn dedup_sorted(row: &mut [u32]) -> usize {
    let mut kept = 0;
    for i in 0..row.len() {
        if i == 0 || row[i] != row[kept - 1] {
            row[kept] = row[i];
            kept += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_exclude_what_they_promise() {
        // Market 0 has items 0..10, market 1 items 10..20. One held-out group per market.
        let mi = OwnedCsr::from_rows([(0..10).collect::<Vec<u32>>(), (10..20).collect()]);
        let train = OwnedCsr::from_rows([vec![0, 1, 2], vec![10, 11]]);
        let held = HeldOut {
            group_market: &[0, 1],
            group_user: &[0, 1],
            train_items: train.view(),
            heldout_groups: &[0, 1],
            valid_item: &[3, 12],
            test_item: &[4, 13],
        };
        let d = |g: usize| format!("group {g}");
        let f = eval_candidates(&held, mi.view(), Protocol::Forec, 5, 1, &[1, 2], &[5, 6], &d).unwrap();
        assert_eq!(f.width, 6);
        // forec: group 0's negatives are market-0 items other than 0..=4: exactly 5..10.
        let mut neg: Vec<u32> = f.valid[1..6].to_vec();
        neg.sort();
        assert_eq!(neg, [5, 6, 7, 8, 9]);
        assert_eq!(f.valid[0], 3);
        assert_eq!(f.test[0], 4);
        assert_eq!(f.test[6], 13);
        // Asking for 6 negatives is impossible for group 0 under forec.
        let err = eval_candidates(&held, mi.view(), Protocol::Forec, 6, 1, &[1, 2], &[5, 6], &d).unwrap_err();
        assert!(err.to_string().starts_with("group 0: only 5 items"), "{err}");
        // Far more than any pool holds: the same error, before a candidate matrix of that width
        // is allocated (one of 2^40 columns would abort the process).
        for n in [10, 1 << 40] {
            let err = eval_candidates(&held, mi.view(), Protocol::Forec, n, 1, &[1, 2], &[5, 6], &d).unwrap_err();
            assert!(err.to_string().starts_with("group 0: only 5 items"), "{err}");
        }
        let err = eval_candidates(&held, mi.view(), Protocol::Forec, usize::MAX, 1, &[1, 2], &[5, 6], &d).unwrap_err();
        assert!(err.to_string().contains("too many"), "{err}");
        // acmr: pool is all 20 items; valid excludes train + valid item, may include the test item.
        let a = eval_candidates(&held, mi.view(), Protocol::Acmr, 16, 1, &[1, 2], &[5, 6], &d).unwrap();
        let valid0: Vec<u32> = a.valid[1..17].to_vec();
        assert!(valid0.iter().all(|x| ![0, 1, 2, 3].contains(x)));
        assert!(valid0.contains(&4), "16 of the 16 allowed items are drawn, so the test item is among them");
        assert!(valid0.iter().any(|&x| x >= 10), "acmr crosses markets");
    }

    #[test]
    fn blocked_sampling_equals_one_pass_over_all_queries() {
        // More queries than one block: the result must not depend on the blocking.
        let groups = QUERY_BLOCK + 1234;
        let n_items = 300u32;
        let mut rng = crate::rng::Rng::for_stream(7, &[1]);
        let rows: Vec<Vec<u32>> = (0..groups).map(|_| (0..3).map(|_| rng.below(n_items as u64) as u32).collect()).collect();
        let train = OwnedCsr::from_rows(rows.clone());
        let valid: Vec<u32> = (0..groups).map(|g| (g as u32 * 7) % n_items).collect();
        let test: Vec<u32> = (0..groups).map(|g| (g as u32 * 11 + 1) % n_items).collect();
        let gm = vec![0u16; groups];
        let gu: Vec<u32> = (0..groups as u32).collect();
        let hg: Vec<u32> = (0..groups as u32).collect();
        let user_keys: Vec<u64> = (0..groups as u64).map(|u| u * 31 + 5).collect();
        let held = HeldOut {
            group_market: &gm, group_user: &gu, train_items: train.view(), heldout_groups: &hg,
            valid_item: &valid, test_item: &test,
        };
        let catalog = OwnedCsr::from_rows([(0..n_items).collect::<Vec<u32>>()]);
        let d = |g: usize| format!("group {g}");
        let got = eval_candidates(&held, catalog.view(), Protocol::Forec, 20, 3, &[9], &user_keys, &d).unwrap();
        // Reference: every query's exclusion at once, through the public sampler.
        let excl = OwnedCsr::from_rows((0..groups).map(|g| {
            let mut v = rows[g].clone();
            v.extend([valid[g], test[g]]);
            v.sort_unstable();
            v.dedup();
            v
        }));
        let keys: Vec<u64> = (0..groups).map(|g| derive_seed(STREAM_TEST, &[9, user_keys[g]])).collect();
        let want = crate::negatives::sample_distinct(catalog.view(), &vec![0; groups], excl.view(), &keys, 20, 3, &d).unwrap();
        for g in [0, 1, QUERY_BLOCK - 1, QUERY_BLOCK, groups - 1] {
            assert_eq!(got.test[g * 21], test[g]);
            assert_eq!(got.test[g * 21 + 1..(g + 1) * 21], want[g * 20..(g + 1) * 20], "query {g}");
        }
        let negatives: Vec<u32> = got.test.chunks(21).flat_map(|r| r[1..].to_vec()).collect();
        assert_eq!(negatives, want);
    }

    #[test]
    fn dedup_sorted_keeps_each_value_once() {
        let mut v = [1, 1, 2, 5, 5, 5, 9];
        assert_eq!(dedup_sorted(&mut v), 4);
        assert_eq!(v[..4], [1, 2, 5, 9]);
        assert_eq!(dedup_sorted(&mut []), 0);
    }

    #[test]
    fn market_items_per_market() {
        let m = market_items(&[0, 1, 0, 1], &[5, 2, 5, 7], 3);
        assert_eq!(m.offsets, [0, 1, 3, 3]);
        assert_eq!(m.values, [5, 2, 7]);
    }
}

//! xmfast-core: the data engine of xmfast, in plain Rust (no Python types).
//!
//! Files → [`parse`] (columnar ratings with shared vocabularies; [`delimited`] text and in-memory
//! [`columns`] join the same vocabularies) → [`filter`] (k-core, item
//! restriction, renumbering) → [`split`] (leave-one-out per market and user) → [`protocol`]
//! (stored evaluation candidates) and [`negatives`] (training negatives per epoch); [`metrics`]
//! ranks held-out items and computes HR/NDCG/MRR/...; [`cooc`]
//! counts item co-occurrence; [`stats`] gives the paired tests' p-values; [`history`] pads histories for sequence models; [`synth`] writes
//! synthetic XMarket-format data; [`attention`] runs a sequence model's attention in evaluation and
//! [`encoder`] its whole stack of encoder blocks.

pub mod attention;
pub mod columns;
pub mod cooc;
pub mod delimited;
pub mod encoder;
pub mod error;
pub mod filter;
pub mod history;
pub mod metrics;
pub mod negatives;
pub mod parse;
pub mod protocol;
pub mod rng;
pub mod split;
pub mod stats;
pub mod synth;
pub mod vocab;

pub use error::{Error, Result};

/// Number of worker threads the core's parallel steps use.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

//! A seeded generator of XMarket-format rating files with real cross-market structure.
//!
//! The world: a global catalog of items, each belonging to one latent *topic* and having a
//! Zipf-like popularity. Each market sells a subset of the catalog (popular items everywhere,
//! the long tail in fewer markets) and has its own mild preference over topics. Each user has one
//! or two favourite topics and rates mostly items of those topics. Item co-occurrence is thus
//! driven by topics shared across markets: a data-poor market can learn from rich ones, and
//! models that use co-occurrence beat popularity. Dates advance per user with same-day ties and
//! a few repeated (user, item) rows, as in the real files.
//!
//! Output is identical for the same configuration whatever the thread count.

use crate::error::{Error, Result};
use crate::parse::format_date;
use crate::rng::{derive_seed, mix64, Rng};
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq)]
pub enum SynthFormat {
    /// `{market}_5core.txt` with the `userId itemId rate date` header.
    Processed,
    /// `ratings_{market}_{category}.txt.gz`, no header, gzip.
    Raw { category: String },
}

#[derive(Clone, Debug)]
pub struct SynthConfig {
    /// Market codes; the first is the largest, sizes fall off as (position + 1)^-`size_decay`.
    pub markets: Vec<String>,
    /// Total ratings over all markets (approximate: rounded per user).
    pub ratings: u64,
    /// Size of the global item catalog.
    pub items: u32,
    pub topics: u32,
    /// Every user gets at least this many ratings.
    pub min_per_user: u32,
    pub mean_per_user: f64,
    /// Share of a user's ratings that come from their favourite topics.
    pub focus: f64,
    pub size_decay: f64,
    pub seed: u64,
    pub format: SynthFormat,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            markets: vec!["uk".into(), "de".into(), "in".into()],
            ratings: 20_000,
            items: 1_000,
            topics: 40,
            min_per_user: 5,
            mean_per_user: 9.0,
            focus: 0.8,
            size_decay: 1.0,
            seed: 0,
            format: SynthFormat::Processed,
        }
    }
}

/// What was written for one market.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthFile {
    pub market: String,
    pub path: PathBuf,
    pub users: u64,
    pub ratings: u64,
}

/// Walker/Vose alias table for O(1) weighted draws.
struct Alias {
    prob: Vec<f64>,
    alias: Vec<u32>,
    values: Vec<u32>,
}

impl Alias {
    fn new(values: Vec<u32>, weights: &[f64]) -> Option<Alias> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let total: f64 = weights.iter().sum();
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Some(Alias { prob, alias, values })
    }

    #[inline]
    fn draw(&self, rng: &mut Rng) -> u32 {
        let i = rng.below(self.prob.len() as u64) as usize;
        let j = if rng.unit_f64() < self.prob[i] { i } else { self.alias[i] as usize };
        self.values[j]
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE36: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A 28-character reviewer id, unique per (seed, global user number): the first 13 characters
/// encode a bijection of the number, the rest is filler.
fn user_id(seed: u64, global_user: u64, out: &mut String) {
    out.push('A');
    let mut v = mix64(global_user ^ mix64(seed));
    for _ in 0..13 {
        out.push(BASE32[(v & 31) as usize] as char);
        v >>= 5;
    }
    let mut f = mix64(global_user.wrapping_add(0x9E37_79B9) ^ seed);
    for _ in 0..14 {
        out.push(BASE32[(f & 31) as usize] as char);
        f >>= 5;
    }
}

/// An ASIN-like item id (`B` + 9 base-36 characters), a bijection of the item number.
fn item_id(item: u32) -> String {
    const SPACE: u64 = 101_559_956_668_416; // 36^9
    let mut v = ((item as u64) * 1_000_000_007 + 12_345_678_901) % SPACE;
    let mut chars = [b'0'; 9];
    for c in chars.iter_mut().rev() {
        *c = BASE36[(v % 36) as usize];
        v /= 36;
    }
    let mut s = String::with_capacity(10);
    s.push('B');
    s.push_str(std::str::from_utf8(&chars).unwrap());
    s
}

struct Market {
    users: u64,
    first_global_user: u64,
    topic_alias: Alias,
    item_alias: Vec<Option<Alias>>,
}

const FIRST_DAY: i32 = 15_340; // 2012-01-01
const LAST_DAY: i32 = 18_627; // 2020-12-31

fn build_market(cfg: &SynthConfig, m: usize, users: u64, first_global_user: u64, share: f64) -> Market {
    let mut rng = Rng::for_stream(cfg.seed, &[1, m as u64]);
    // Topic preference of the market: uniform weights times log-normal-ish noise.
    let topic_weights: Vec<f64> = (0..cfg.topics)
        .map(|_| (0.5 + rng.unit_f64()) * (1.0 + 2.0 * rng.unit_f64()).powi(2))
        .collect();
    let topic_alias = Alias::new((0..cfg.topics).collect(), &topic_weights).expect("topics > 0");
    // The catalog: the most popular 5% everywhere, the rest with a share growing with market size.
    let keep_share = 0.35 + 0.65 * share.sqrt();
    let head = (cfg.items as f64 * 0.05).ceil() as u32;
    let mut by_topic: Vec<(Vec<u32>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); cfg.topics as usize];
    for i in 0..cfg.items {
        let u = (mix64(derive_seed(cfg.seed, &[2, m as u64, i as u64])) >> 11) as f64 / (1u64 << 53) as f64;
        if i < head || u < keep_share {
            let topic = (mix64(derive_seed(cfg.seed, &[3, i as u64])) % cfg.topics as u64) as usize;
            by_topic[topic].0.push(i);
            by_topic[topic].1.push(1.0 / (i as f64 + 10.0));
        }
    }
    let item_alias = by_topic.into_iter().map(|(v, w)| Alias::new(v, &w)).collect();
    Market { users, first_global_user, topic_alias, item_alias }
}

fn draw_item(market: &Market, topic: u32, rng: &mut Rng) -> u32 {
    let mut t = topic;
    loop {
        if let Some(a) = &market.item_alias[t as usize] {
            return a.draw(rng);
        }
        t = market.topic_alias.draw(rng); // topic absent from this market's catalog
    }
}

/// Appends one user's rows to `out`.
fn write_user(cfg: &SynthConfig, m: usize, market: &Market, u: u64, out: &mut String) {
    let mut rng = Rng::for_stream(cfg.seed, &[4, m as u64, u]);
    let extra_mean = (cfg.mean_per_user - cfg.min_per_user as f64).max(0.0);
    // Geometric number of extra ratings with the requested mean.
    let p = 1.0 / (1.0 + extra_mean);
    let mut n = cfg.min_per_user as u64;
    while rng.unit_f64() > p && n < 5_000 {
        n += 1;
    }
    let favourites: Vec<u32> = (0..1 + rng.below(2)).map(|_| market.topic_alias.draw(&mut rng)).collect();
    let span = (n as i32 * 45).min(LAST_DAY - FIRST_DAY);
    let mut day = FIRST_DAY + rng.below((LAST_DAY - FIRST_DAY - span).max(1) as u64) as i32;
    let mut id = String::with_capacity(28);
    user_id(cfg.seed, market.first_global_user + u, &mut id);
    let mut seen: Vec<u32> = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let topic = if rng.unit_f64() < cfg.focus {
            favourites[rng.below(favourites.len() as u64) as usize]
        } else {
            market.topic_alias.draw(&mut rng)
        };
        let mut item = draw_item(market, topic, &mut rng);
        // About 1% of rows repeat an item, like the real files; otherwise re-draw repeats.
        for _ in 0..20 {
            if !seen.contains(&item) || rng.unit_f64() < 0.01 {
                break;
            }
            item = draw_item(market, topic, &mut rng);
        }
        seen.push(item);
        let rating = match rng.below(100) {
            0..=59 => "5.0",
            60..=79 => "4.0",
            80..=89 => "3.0",
            90..=94 => "2.0",
            _ => "1.0",
        };
        out.push_str(&id);
        out.push(' ');
        out.push_str(&item_id(item));
        out.push(' ');
        out.push_str(rating);
        out.push(' ');
        out.push_str(&format_date(day));
        out.push('\n');
        // Next date: the same day with probability 0.15, else a geometric gap (mean ~30 days).
        if rng.unit_f64() >= 0.15 {
            let mut gap = 1;
            while rng.unit_f64() > 1.0 / 30.0 && gap < 400 {
                gap += 1;
            }
            day = (day + gap).min(LAST_DAY);
        }
    }
}

/// File name of a market's output file in `format`.
pub fn file_name(market: &str, format: &SynthFormat) -> String {
    match format {
        SynthFormat::Processed => format!("{market}_5core.txt"),
        SynthFormat::Raw { category } => format!("ratings_{market}_{category}.txt.gz"),
    }
}

const USERS_PER_TASK: u64 = 2_048;
const TASKS_PER_WAVE: u64 = 64;

/// Writes one file per market into `dir` (which must exist). Files are written under a
/// temporary name and renamed into place.
pub fn synthesize(cfg: &SynthConfig, dir: &Path) -> Result<Vec<SynthFile>> {
    if cfg.markets.is_empty() || cfg.items == 0 || cfg.topics == 0 || cfg.min_per_user == 0 {
        return Err(Error::invalid("synth needs at least one market, one item, one topic and min_per_user >= 1"));
    }
    if cfg.mean_per_user < cfg.min_per_user as f64 {
        return Err(Error::invalid("mean_per_user must be at least min_per_user"));
    }
    if let SynthFormat::Raw { category } = &cfg.format {
        if category.is_empty() || !category.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid(format!("category {category:?} must be letters, digits and underscores")));
        }
    }
    let weights: Vec<f64> = (0..cfg.markets.len()).map(|i| (i as f64 + 1.0).powf(-cfg.size_decay)).collect();
    let total: f64 = weights.iter().sum();
    let users_of = |m: usize, ratings: u64| (ratings as f64 * (weights[m] / total) / cfg.mean_per_user).round() as u64;
    // A market too small for one user is refused, not given one anyway: that wrote 31 ratings for 0.
    if let Some(m) = (0..cfg.markets.len()).find(|&m| users_of(m, cfg.ratings) == 0) {
        let last = cfg.markets.len() - 1; // the smallest share
        let need = (0.5 * cfg.mean_per_user * total / weights[last]).ceil() as u64;
        let need = (need..).find(|&n| users_of(last, n) >= 1).unwrap_or(need);
        return Err(Error::invalid(format!(
            "ratings {} is too few for market {} to get one user ({} ratings per user on average); give at least {need}",
            cfg.ratings, cfg.markets[m], cfg.mean_per_user
        )));
    }
    let mut first_global_user = 0u64;
    let mut written = Vec::new();
    for (m, name) in cfg.markets.iter().enumerate() {
        let users = users_of(m, cfg.ratings);
        let market = build_market(cfg, m, users, first_global_user, weights[m] / weights[0]);
        first_global_user += users;
        let path = dir.join(file_name(name, &cfg.format));
        let tmp = dir.join(format!(".{}.partial", file_name(name, &cfg.format)));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let buffered = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut sink: Box<dyn Write> = match &cfg.format {
            SynthFormat::Processed => Box::new(buffered),
            SynthFormat::Raw { .. } => Box::new(flate2::write::GzEncoder::new(buffered, flate2::Compression::new(1))),
        };
        let io = |e| Error::io(&tmp, e);
        if cfg.format == SynthFormat::Processed {
            sink.write_all(b"userId itemId rate date\n").map_err(io)?;
        }
        let mut rows = 0u64;
        let tasks = market.users.div_ceil(USERS_PER_TASK);
        let mut t0 = 0;
        while t0 < tasks {
            let t1 = (t0 + TASKS_PER_WAVE).min(tasks);
            let texts: Vec<String> = (t0..t1)
                .into_par_iter()
                .map(|t| {
                    let mut s = String::with_capacity(USERS_PER_TASK as usize * 600);
                    for u in t * USERS_PER_TASK..((t + 1) * USERS_PER_TASK).min(market.users) {
                        write_user(cfg, m, &market, u, &mut s);
                    }
                    s
                })
                .collect();
            for s in &texts {
                rows += memchr::memchr_iter(b'\n', s.as_bytes()).count() as u64;
                sink.write_all(s.as_bytes()).map_err(io)?;
            }
            t0 = t1;
        }
        sink.flush().map_err(io)?;
        drop(sink);
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        written.push(SynthFile { market: name.clone(), path, users: market.users, ratings: rows });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{read_ratings, Source};

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let id = item_id(i);
            assert_eq!(id.len(), 10);
            assert!(seen.insert(id));
        }
        let mut users = std::collections::HashSet::new();
        for u in 0..20_000 {
            let mut s = String::new();
            user_id(1, u, &mut s);
            assert_eq!(s.len(), 28);
            assert!(users.insert(s));
        }
    }

    #[test]
    fn writes_parsable_deterministic_files_with_cross_market_overlap() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig { ratings: 6_000, seed: 3, ..Default::default() };
        let files = synthesize(&cfg, dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        assert!(files[0].ratings > files[1].ratings && files[1].ratings > files[2].ratings);
        let total: u64 = files.iter().map(|f| f.ratings).sum();
        assert!((4_500..7_500).contains(&total), "{total}");
        let first = std::fs::read(&files[0].path).unwrap();
        let again = tempfile::tempdir().unwrap();
        let files2 = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap()
            .install(|| synthesize(&cfg, again.path()).unwrap());
        assert_eq!(first, std::fs::read(&files2[0].path).unwrap(), "same config, same bytes");

        let sources: Vec<Source> = files.iter().map(|f| Source { market: f.market.clone(), path: f.path.clone() }).collect();
        let r = read_ratings(&sources).unwrap();
        assert_eq!(r.len() as u64, total);
        // Items are shared across markets, users are not.
        let items_of = |m: u16| -> std::collections::HashSet<u32> {
            r.market.iter().zip(&r.item).filter(|(&mk, _)| mk == m).map(|(_, &i)| i).collect()
        };
        let (a, b) = (items_of(0), items_of(2));
        assert!(a.intersection(&b).count() * 2 > b.len(), "most of the small market's items are sold in the large one");
        // Every user has at least min_per_user ratings.
        let mut per_user = std::collections::HashMap::new();
        for &u in &r.user {
            *per_user.entry(u).or_insert(0u32) += 1;
        }
        assert!(per_user.values().all(|&c| c >= 5));
    }

    #[test]
    fn too_few_ratings_are_refused_not_rounded_up() {
        let dir = tempfile::tempdir().unwrap();
        for ratings in [0, 1, 20] {
            let cfg = SynthConfig { ratings, ..Default::default() };
            let err = synthesize(&cfg, dir.path()).unwrap_err().to_string();
            assert!(err.starts_with(&format!("ratings {ratings} is too few for market ")), "{err}");
            assert!(err.ends_with("give at least 25"), "{err}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
        // The smallest count it names is enough.
        let files = synthesize(&SynthConfig { ratings: 25, ..Default::default() }, dir.path()).unwrap();
        assert_eq!(files[2].users, 1, "{files:?}");
    }

    #[test]
    fn raw_format_is_gzip_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            markets: vec!["jp".into()],
            ratings: 500,
            format: SynthFormat::Raw { category: "Electronics".into() },
            ..Default::default()
        };
        let files = synthesize(&cfg, dir.path()).unwrap();
        assert!(files[0].path.ends_with("ratings_jp_Electronics.txt.gz"));
        let r = read_ratings(&[Source { market: "jp".into(), path: files[0].path.clone() }]).unwrap();
        assert!(r.files[0].gzip && !r.files[0].had_header);
        assert_eq!(r.len() as u64, files[0].ratings);
    }
}

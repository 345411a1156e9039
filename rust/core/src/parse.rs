//! Parsing XMarket rating files into columnar arrays with shared user and item vocabularies.
//!
//! Two layouts are read: the processed 5-core files (`userId itemId rate date` header) and the
//! official full files `ratings_{market}_{category}.txt.gz` (no header). Columns are separated by
//! spaces or tabs; gzip is detected from the magic bytes, not the file name; a leading UTF-8
//! byte-order mark is skipped, and one anywhere else (two files joined with `cat`) is an error
//! rather than an invisible part of an id. Each file is parsed in parallel chunks that intern ids locally;
//! the chunk vocabularies are then merged in input order, so numbering is by first appearance
//! exactly as a sequential reader would give.

use crate::error::{Error, Result};
use crate::vocab::Vocab;
use hashbrown::HashTable;
use rayon::prelude::*;
use std::hash::BuildHasher;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The 18 markets of XMarket, by their two-letter codes.
pub const XMARKET_MARKETS: [&str; 18] = [
    "ae", "au", "br", "ca", "cn", "de", "es", "fr", "in", "it", "jp", "mx", "nl", "sa", "sg", "tr",
    "uk", "us",
];

pub const HEADER: [&str; 4] = ["userId", "itemId", "rate", "date"];

/// The UTF-8 byte-order mark, skipped at the start of a file.
pub(crate) const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// One input file and the market its rows belong to.
#[derive(Clone, Debug)]
pub struct Source {
    pub market: String,
    pub path: PathBuf,
}

/// What was read from one file, for manifests and error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct FileInfo {
    pub market: String,
    pub path: PathBuf,
    /// Size of the file on disk (compressed size for gzip).
    pub bytes: u64,
    /// blake3 digest of the file as stored on disk, hex.
    pub blake3: String,
    pub gzip: bool,
    pub had_header: bool,
    pub rows: u64,
}

/// All ratings of the loaded markets, one entry per row, rows in input order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ratings {
    pub markets: Vec<String>,
    pub users: Vocab,
    pub items: Vocab,
    pub market: Vec<u16>,
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub rating: Vec<f32>,
    /// Days since 1970-01-01.
    pub day: Vec<i32>,
    pub files: Vec<FileInfo>,
}

impl Ratings {
    pub fn len(&self) -> usize {
        self.user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i32, month: u32, day: u32) -> i32 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u32;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i32 - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i32) -> (i32, u32, u32) {
    // i64 inside: the shift by 719 468 days would overflow i32 near its ends.
    let z = z as i64 + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u32;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = (yoe as i64 + era * 400) as i32;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// Parses `YYYY-MM-DD` strictly into days since the epoch.
pub fn parse_date(s: &[u8]) -> std::result::Result<i32, String> {
    let bad = || format!("unparsable date {:?} (expected YYYY-MM-DD)", String::from_utf8_lossy(s));
    if s.len() != 10 || s[4] != b'-' || s[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        s[r].iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u32)
        })
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return Err(bad());
    };
    let month_len = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y as i32) => 29,
        2 => 28,
        _ => return Err(format!("unparsable date {:?}: month {m} does not exist", String::from_utf8_lossy(s))),
    };
    if d == 0 || d > month_len {
        return Err(format!("unparsable date {:?}: day {d} does not exist", String::from_utf8_lossy(s)));
    }
    Ok(days_from_civil(y as i32, m, d))
}

/// Formats days since the epoch as `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// blake3 of a file's bytes as stored on disk, hex: the digest `read_ratings` records for each
/// input, without parsing. Streams the file in 16 MiB blocks, each hashed on all cores (the
/// prepared dataset's arrays are verified with it on every load, so its speed matters).
pub fn file_digest(path: &Path) -> Result<String> {
    const BLOCK: usize = 16 << 20;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_or(BLOCK as u64, |m| m.len());
    // No bigger than the file (plus one byte to see its end): small files are hashed on every load too.
    let block = usize::try_from(size).map_or(BLOCK, |n| n.saturating_add(1).min(BLOCK));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; block];
    loop {
        // Fill the block (a read may return less), so the parallel hash gets large inputs.
        let mut filled = 0;
        while filled < block {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        if filled == 0 {
            break;
        }
        if filled >= 1 << 17 {
            hasher.update_rayon(&buf[..filled]); // below ~128 KiB threads cost more than they save
        } else {
            hasher.update(&buf[..filled]);
        }
        if filled < block {
            break;
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Reads a file fully, decompressing gzip (detected by magic bytes; multi-member aware).
/// Returns (content, on-disk size, blake3 of the on-disk bytes, was gzip).
pub fn read_maybe_gzip(path: &Path) -> Result<(Vec<u8>, u64, String, bool)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.is_empty() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
        // Said plainly: "no ratings" would hide that the download (or copy) never happened.
        return Err(Error::file(path, "empty file (0 bytes), not a gzip archive; re-download the file"));
    }
    let digest = if raw.len() > 1 << 20 {
        blake3::Hasher::new().update_rayon(&raw).finalize()
    } else {
        blake3::hash(&raw)
    };
    let size = raw.len() as u64;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| {
                let what = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "truncated gzip: the compressed stream ends early (re-download the file)".to_string()
                } else {
                    format!("corrupt gzip data ({e}); re-download the file")
                };
                Error::file(path, what)
            })?;
        Ok((out, size, digest.to_hex().to_string(), true))
    } else {
        Ok((raw, size, digest.to_hex().to_string(), false))
    }
}

/// Rows parsed from one chunk, with ids numbered locally in first-appearance order. `K` is the
/// key type: `&str` borrowed from the text, or `Cow<str>` where a quoted field had to be unescaped.
/// `market`/`market_keys` stay empty when the whole file belongs to one given market.
pub(crate) struct Chunk<K> {
    pub user_keys: Vec<K>,
    pub item_keys: Vec<K>,
    pub market_keys: Vec<K>,
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub market: Vec<u16>,
    pub rating: Vec<f32>,
    pub day: Vec<i32>,
}

impl<K> Chunk<K> {
    pub fn with_capacity(est: usize) -> Self {
        Chunk {
            user_keys: Vec::new(),
            item_keys: Vec::new(),
            market_keys: Vec::new(),
            user: Vec::with_capacity(est),
            item: Vec::with_capacity(est),
            market: Vec::new(),
            rating: Vec::with_capacity(est),
            day: Vec::with_capacity(est),
        }
    }
}

/// Error found in a chunk: byte offset of the bad line (to count its line number; a row number
/// for columns) and message.
pub(crate) struct ChunkError {
    pub line_start: usize,
    pub message: String,
}

/// The message for a byte-order mark met after the start of a file.
pub(crate) const BOM_INSIDE: &str =
    "a byte-order mark (U+FEFF) inside the file, not at its start (files joined with `cat`?); remove it";

pub(crate) struct LocalInterner<K> {
    pub keys: Vec<K>,
    table: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl<K: AsRef<str>> LocalInterner<K> {
    pub fn new(cap: usize) -> Self {
        LocalInterner {
            keys: Vec::with_capacity(cap),
            table: HashTable::with_capacity(cap),
            hasher: Default::default(),
        }
    }

    /// The local number of `key`, and whether it is new.
    #[inline]
    pub fn intern_new(&mut self, key: K) -> (u32, bool) {
        let hash = self.hasher.hash_one(key.as_ref());
        let keys = &self.keys;
        if let Some(&id) = self.table.find(hash, |&id| keys[id as usize].as_ref() == key.as_ref()) {
            return (id, false);
        }
        let id = self.keys.len() as u32;
        self.keys.push(key);
        let (keys, hasher) = (&self.keys, &self.hasher);
        self.table
            .insert_unique(hash, id, |&o| hasher.hash_one(keys[o as usize].as_ref()));
        (id, true)
    }

    #[inline]
    pub fn intern(&mut self, key: K) -> u32 {
        self.intern_new(key).0
    }
}

/// Whether `name` may name a market: non-empty, ASCII letters, digits, `_` and `-` only (it
/// becomes part of file and directory names and of command lines). The one rule, used by the
/// parsers for market columns and by Python through `core.check_market_name`.
pub fn valid_market_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The error message for a market column value that is not a valid market name.
pub(crate) fn bad_market_message(name: &str) -> String {
    format!("market name {name:?} is not valid: use letters, digits, `_` and `-` only")
}

/// Field separators: any ASCII whitespace but the line break (a stray carriage return or form
/// feed inside a line separates fields rather than becoming part of an id).
fn is_sep(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// Splits a line into at most 5 fields (5 means "too many").
#[inline]
fn split_fields(line: &[u8]) -> ([&[u8]; 5], usize) {
    let mut fields: [&[u8]; 5] = [&[]; 5];
    let mut n = 0;
    let mut i = 0;
    while i < line.len() && n < 5 {
        while i < line.len() && is_sep(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let start = i;
        while i < line.len() && !is_sep(line[i]) {
            i += 1;
        }
        fields[n] = &line[start..i];
        n += 1;
    }
    (fields, n)
}

fn describe_column_error(line: &[u8], n: usize) -> String {
    let other_sep = [b',', b';', b'|']
        .into_iter()
        .find(|c| line.contains(c))
        .map(|c| format!(" (the line contains {:?}: columns must be separated by spaces)", c as char))
        .unwrap_or_default();
    if n >= 5 {
        format!("expected 4 columns (userId itemId rate date), found more{other_sep}")
    } else {
        format!("expected 4 columns (userId itemId rate date), found {n}{other_sep}")
    }
}

fn parse_chunk(text: &[u8], base: usize) -> std::result::Result<Chunk<&str>, ChunkError> {
    let est = text.len() / 56 + 16;
    let mut users = LocalInterner::new(est / 4);
    let mut items = LocalInterner::new(est / 4);
    let mut c = Chunk::with_capacity(est);
    each_line(text, base, is_sep, |line, fail| {
        let (f, n) = split_fields(line);
        if n != 4 {
            return Err(fail(describe_column_error(line, n)));
        }
        if f[0] == HEADER[0].as_bytes() && f[1] == HEADER[1].as_bytes() {
            return Err(fail("duplicate header: a `userId itemId rate date` line inside the data".into()));
        }
        let as_str = |field: &'static str, b| {
            std::str::from_utf8(b).map_err(|e| {
                fail(format!("{field} is not valid UTF-8 (invalid byte at column {})", e.valid_up_to() + 1))
            })
        };
        let u = as_str("userId", f[0])?;
        let it = as_str("itemId", f[1])?;
        let r_text = as_str("rate", f[2])?;
        let r: f32 = r_text
            .parse()
            .map_err(|_| fail(format!("non-numeric rating {r_text:?}")))?;
        if !r.is_finite() {
            return Err(fail(format!("rating {r_text:?} is not a finite number")));
        }
        let d = parse_date(f[3]).map_err(fail)?;
        c.user.push(users.intern(u));
        c.item.push(items.intern(it));
        c.rating.push(r);
        c.day.push(d);
        Ok(())
    })?;
    c.user_keys = users.keys;
    c.item_keys = items.keys;
    Ok(c)
}

/// Calls `row(line, fail)` for each line of a chunk (`base`: the chunk's offset in the file)
/// that is not blank (`blank` for every byte), its `\n` and any `\r` before it removed; `fail`
/// makes that line's error. A byte-order mark inside the chunk fails its line: one SIMD scan
/// per chunk instead of a test per field (a mark there means files joined with `cat`).
#[inline]
pub(crate) fn each_line<'a>(
    text: &'a [u8],
    base: usize,
    blank: impl Fn(u8) -> bool,
    mut row: impl FnMut(&'a [u8], &dyn Fn(String) -> ChunkError) -> std::result::Result<(), ChunkError>,
) -> std::result::Result<(), ChunkError> {
    let bom_at = memchr::memmem::find(text, UTF8_BOM);
    let mut pos = 0;
    while pos < text.len() {
        let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i);
        let line = &text[pos..end];
        let line_start = base + pos;
        let fail = |message: String| ChunkError { line_start, message };
        if bom_at.is_some_and(|b| b < end) {
            return Err(fail(BOM_INSIDE.into()));
        }
        pos = end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(|&b| blank(b)) {
            continue; // blank lines carry nothing and are skipped
        }
        row(line, &fail)?;
    }
    Ok(())
}

/// Splits `text` into about `parts` pieces that end on line boundaries.
pub(crate) fn chunk_bounds(text: &[u8], parts: usize) -> Vec<(usize, usize)> {
    let target = (text.len() / parts.max(1)).max(1 << 16);
    let mut bounds = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + target).min(text.len());
        if end < text.len() {
            end = memchr::memchr(b'\n', &text[end..]).map_or(text.len(), |i| end + i + 1);
        }
        bounds.push((start, end));
        start = end;
    }
    bounds
}

/// Skips a leading UTF-8 byte-order mark (written by many Windows tools; not part of the first
/// field) and refuses UTF-16 text.
pub(crate) fn text_body<'t>(path: &Path, text: &'t [u8]) -> Result<&'t [u8]> {
    let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
    if text.starts_with(b"\xff\xfe") || text.starts_with(b"\xfe\xff") {
        return Err(Error::file(path, "UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"));
    }
    Ok(text)
}

/// Parses `text[body_start..]` in parallel chunks ending on line boundaries with `parse`
/// (called with a chunk and its offset in the body), and reports the first error in file order
/// with its 1-based line number.
pub(crate) fn parse_lines<'t, K, F>(path: &Path, text: &'t [u8], body_start: usize, parse: F) -> Result<Vec<Chunk<K>>>
where
    K: Send,
    F: Fn(&'t [u8], usize) -> std::result::Result<Chunk<K>, ChunkError> + Sync,
{
    let body = if body_start >= text.len() { &[][..] } else { &text[body_start..] };
    let bounds = chunk_bounds(body, rayon::current_num_threads() * 4);
    let chunks: Vec<std::result::Result<Chunk<K>, ChunkError>> =
        bounds.par_iter().map(|&(s, e)| parse(&body[s..e], s)).collect();
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        match c {
            Ok(c) => out.push(c),
            Err(err) => {
                let line = (memchr::memchr_iter(b'\n', &text[..body_start + err.line_start]).count() + 1) as u64;
                return Err(Error::parse(path, line, err.message));
            }
        }
    }
    Ok(out)
}

/// Finds or adds a market by name; its index.
fn market_index(out: &mut Ratings, name: &str) -> Result<u16> {
    let i = match out.markets.iter().position(|m| m == name) {
        Some(i) => i,
        None => {
            out.markets.push(name.to_string());
            out.markets.len() - 1
        }
    };
    u16::try_from(i).map_err(|_| Error::invalid("more than 65535 markets"))
}

/// Appends parsed chunks to `out`: local vocabularies merge into the global ones in chunk order
/// (= first appearance), then ids are renumbered in parallel. Rows belong to `fixed_market`, or
/// where it is None to the chunks' own market columns. Returns the number of rows.
pub(crate) fn merge_chunks<K: AsRef<str> + Sync>(out: &mut Ratings, chunks: &[Chunk<K>], fixed_market: Option<u16>) -> Result<u64> {
    let rows: usize = chunks.iter().map(|c| c.user.len()).sum();
    let mut maps: Vec<(Vec<u32>, Vec<u32>, Vec<u16>)> = Vec::with_capacity(chunks.len());
    for c in chunks {
        let um = c.user_keys.iter().map(|k| out.users.intern(k.as_ref())).collect();
        let im = c.item_keys.iter().map(|k| out.items.intern(k.as_ref())).collect();
        let mm = c.market_keys.iter().map(|k| market_index(out, k.as_ref())).collect::<Result<_>>()?;
        maps.push((um, im, mm));
    }
    let start = out.user.len();
    out.user.resize(start + rows, 0);
    out.item.resize(start + rows, 0);
    out.market.resize(start + rows, fixed_market.unwrap_or(0));
    out.rating.reserve(rows);
    out.day.reserve(rows);
    {
        let mut user_slices = Vec::with_capacity(chunks.len());
        let mut item_slices = Vec::with_capacity(chunks.len());
        let mut market_slices = Vec::with_capacity(chunks.len());
        let (mut u_rest, mut i_rest, mut m_rest) =
            (&mut out.user[start..], &mut out.item[start..], &mut out.market[start..]);
        for c in chunks {
            let (a, b) = std::mem::take(&mut u_rest).split_at_mut(c.user.len());
            user_slices.push(a);
            u_rest = b;
            let (a, b) = std::mem::take(&mut i_rest).split_at_mut(c.item.len());
            item_slices.push(a);
            i_rest = b;
            let (a, b) = std::mem::take(&mut m_rest).split_at_mut(c.user.len());
            market_slices.push(a);
            m_rest = b;
        }
        chunks
            .par_iter()
            .zip(maps.par_iter())
            .zip(user_slices.into_par_iter().zip(item_slices.into_par_iter()).zip(market_slices.into_par_iter()))
            .for_each(|((c, (um, im, mm)), ((us, is), ms))| {
                for (dst, &local) in us.iter_mut().zip(&c.user) {
                    *dst = um[local as usize];
                }
                for (dst, &local) in is.iter_mut().zip(&c.item) {
                    *dst = im[local as usize];
                }
                if fixed_market.is_none() {
                    for (dst, &local) in ms.iter_mut().zip(&c.market) {
                        *dst = mm[local as usize];
                    }
                }
            });
    }
    for c in chunks {
        out.rating.extend_from_slice(&c.rating);
        out.day.extend_from_slice(&c.day);
    }
    Ok(rows as u64)
}

/// The error for a file without a single rating.
pub(crate) fn no_ratings(path: &Path) -> Error {
    Error::file(path, "no ratings in file (empty, or only a header)")
}

/// Parses one XMarket file's content and appends its rows to `out`.
fn parse_into(out: &mut Ratings, market_index: u16, path: &Path, text: &[u8]) -> Result<(bool, u64)> {
    let text = text_body(path, text)?;
    // The header, if any, is the first non-blank line.
    let mut body_start = 0;
    let mut had_header = false;
    let mut first_line_no = 1u64;
    {
        let mut pos = 0;
        while pos < text.len() {
            let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i);
            let line = &text[pos..end];
            if line.iter().all(|&b| is_sep(b) || b == b'\r') {
                pos = end + 1;
                first_line_no += 1;
                continue;
            }
            let (f, n) = split_fields(line.strip_suffix(b"\r").unwrap_or(line));
            if n >= 1 && f[0] == HEADER[0].as_bytes() {
                if n != 4 || (0..4).any(|i| f[i] != HEADER[i].as_bytes()) {
                    return Err(Error::parse(
                        path,
                        first_line_no,
                        "malformed header: expected `userId itemId rate date`",
                    ));
                }
                had_header = true;
                body_start = end + 1;
            }
            break;
        }
    }
    let chunks = parse_lines(path, text, body_start, parse_chunk)?;
    if chunks.iter().all(|c| c.user.is_empty()) {
        return Err(no_ratings(path));
    }
    let rows = merge_chunks(out, &chunks, Some(market_index))?;
    Ok((had_header, rows))
}

/// How one input's rows are given.
#[derive(Clone, Debug)]
pub enum Content<'a> {
    /// An XMarket file (5-core with header, or raw without), plain or gzip.
    Xmarket(PathBuf),
    /// Delimited text with a header, read through a column mapping (see [`crate::delimited`]).
    Delimited(PathBuf, crate::delimited::DelimitedSpec),
    /// Columns already in memory (a Parquet file read by the caller), in batches; the path is
    /// that of the file they came from, for its digest and for messages.
    Columns(PathBuf, Vec<crate::columns::ColumnBatch<'a>>),
}

impl Content<'_> {
    pub fn path(&self) -> &Path {
        match self {
            Content::Xmarket(p) | Content::Delimited(p, _) | Content::Columns(p, _) => p,
        }
    }
}

/// One input of [`read_inputs`]: its rows, and the market they belong to; None where the
/// content has a market column (a delimited file's mapped market column, a market column).
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub market: Option<String>,
    pub content: Content<'a>,
}

/// Reads inputs of any format (in order) into one table with shared vocabularies, numbered by
/// first appearance across all inputs: the same ratings in the same order give the same arrays
/// whatever the format.
///
/// Market names become indices in order of first mention (a given market, or a market column's
/// value at its first row); several inputs may share a market.
pub fn read_inputs(inputs: &[Input<'_>]) -> Result<Ratings> {
    if inputs.is_empty() {
        return Err(Error::invalid("no rating files given"));
    }
    let mut out = Ratings::default();
    for input in inputs {
        let fixed = input.market.as_deref().map(|m| market_index(&mut out, m)).transpose()?;
        let path = input.content.path();
        let (bytes, digest, gzip, had_header, rows) = match &input.content {
            Content::Xmarket(_) | Content::Delimited(..) => {
                let (text, bytes, digest, gzip) = read_maybe_gzip(path)?;
                let (had_header, rows) = match (&input.content, fixed) {
                    (Content::Delimited(_, spec), fixed) => crate::delimited::parse_into(&mut out, fixed, path, &text, spec)?,
                    (_, Some(m)) => parse_into(&mut out, m, path, &text)?,
                    (_, None) => return Err(Error::file(path, "an XMarket file needs its market given (it has no market column)")),
                };
                (bytes, digest, gzip, had_header, rows)
            }
            Content::Columns(_, batches) => {
                let rows = crate::columns::add_columns(&mut out, fixed, path, batches)?;
                let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
                (bytes, file_digest(path)?, false, true, rows)
            }
        };
        // A market column's file records the markets it held, in order of first appearance.
        let market = match &input.market {
            Some(m) => m.clone(),
            None => {
                let (mut seen, mut flag) = (Vec::new(), vec![false; out.markets.len()]);
                for &m in &out.market[out.market.len() - rows as usize..] {
                    if !std::mem::replace(&mut flag[m as usize], true) {
                        seen.push(m);
                    }
                }
                seen.iter().map(|&m| out.markets[m as usize].as_str()).collect::<Vec<_>>().join(",")
            }
        };
        out.files.push(FileInfo { market, path: path.to_path_buf(), bytes, blake3: digest, gzip, had_header, rows });
    }
    Ok(out)
}

/// Reads the given XMarket files (in order) into one table with shared vocabularies.
///
/// Market names become indices in order of first mention; several files may share a market.
pub fn read_ratings(sources: &[Source]) -> Result<Ratings> {
    let inputs: Vec<Input> = sources
        .iter()
        .map(|s| Input { market: Some(s.market.clone()), content: Content::Xmarket(s.path.clone()) })
        .collect();
    read_inputs(&inputs)
}

/// Parses bytes already in memory (used by tests and fuzzing; `name` stands in for the path).
pub fn parse_bytes(market: &str, name: &str, text: &[u8]) -> Result<Ratings> {
    let mut out = Ratings {
        markets: vec![market.to_string()],
        ..Default::default()
    };
    let path = PathBuf::from(name);
    let (had_header, rows) = parse_into(&mut out, 0, &path, text)?;
    out.files.push(FileInfo {
        market: market.to_string(),
        path,
        bytes: text.len() as u64,
        blake3: blake3::hash(text).to_hex().to_string(),
        gzip: false,
        had_header,
        rows,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SAMPLE: &str = "userId itemId rate date\nu1 i1 5.0 2020-01-02\nu2 i1 4.0 2020-01-03\nu1 i2 3.5 2019-12-31\n";

    #[test]
    fn parses_processed_file_with_header() {
        let r = parse_bytes("uk", "uk_5core.txt", SAMPLE.as_bytes()).unwrap();
        assert_eq!(r.user, vec![0, 1, 0]);
        assert_eq!(r.item, vec![0, 0, 1]);
        assert_eq!(r.rating, vec![5.0, 4.0, 3.5]);
        assert_eq!(r.day, vec![18263, 18264, 18261]);
        assert_eq!(r.users.iter().collect::<Vec<_>>(), ["u1", "u2"]);
        assert!(r.files[0].had_header);
    }

    #[test]
    fn parses_headerless_raw_rows_tabs_and_crlf() {
        let r = parse_bytes("de", "raw", b"a\tb 1 2001-02-03\r\n\r\nc b 2.0 2004-02-29\n").unwrap();
        assert_eq!(r.len(), 2);
        assert!(!r.files[0].had_header);
        assert_eq!(r.items.len(), 1);
        assert_eq!(format_date(r.day[1]), "2004-02-29");
    }

    #[test]
    fn dates_round_trip() {
        for d in [-1000, 0, 1, 10957, 18262, 20000, 60000] {
            let s = format_date(d);
            assert_eq!(parse_date(s.as_bytes()).unwrap(), d, "{s}");
        }
        assert_eq!(parse_date(b"1970-01-01").unwrap(), 0);
        assert!(parse_date(b"2019-02-29").is_err());
        assert!(parse_date(b"2020-13-01").is_err());
        assert!(parse_date(b"2020/01/01").is_err());
        assert!(parse_date(b"20-01-01").is_err());
    }

    fn err_of(text: &[u8]) -> String {
        parse_bytes("uk", "f.txt", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(
            err_of(b"userId itemId rate date\nu1 i1 5.0 2020-01-02\nu1,i1,5.0,2020-01-02\n"),
            "f.txt:3: expected 4 columns (userId itemId rate date), found 1 (the line contains ',': columns must be separated by spaces)"
        );
        assert_eq!(err_of(b"u1 i1 five 2020-01-02\n"), "f.txt:1: non-numeric rating \"five\"");
        assert_eq!(err_of(b"u1 i1 5 2020-01-02 x\n"), "f.txt:1: expected 4 columns (userId itemId rate date), found more");
        assert_eq!(
            err_of(b"u1 i1 5 2020-01-02\nu i 1 2020-02-30\n"),
            "f.txt:2: unparsable date \"2020-02-30\": day 30 does not exist"
        );
        assert_eq!(err_of(b"u1 i1 nan 2020-01-02\n"), "f.txt:1: rating \"nan\" is not a finite number");
        assert!(err_of(b"userId itemId rate date\nu i 1 2020-01-01\nuserId itemId rate date\n")
            .starts_with("f.txt:3: duplicate header"));
        assert!(err_of(b"u\xff i 1 2020-01-01\n").starts_with("f.txt:1: userId is not valid UTF-8"));
        assert_eq!(err_of(b"userId itemId rate date\n"), "f.txt: no ratings in file (empty, or only a header)");
        assert_eq!(err_of(b""), "f.txt: no ratings in file (empty, or only a header)");
    }

    #[test]
    fn line_numbers_are_right_across_chunks() {
        let mut text = String::from("userId itemId rate date\n");
        for i in 0..200_000 {
            text.push_str(&format!("user{} item{} 4.0 2020-01-01\n", i % 977, i % 313));
        }
        text.push_str("bad line\n");
        let err = err_of(text.as_bytes());
        assert_eq!(err, "f.txt:200002: expected 4 columns (userId itemId rate date), found 2");
        // And first-appearance numbering survives the parallel merge.
        text.truncate(text.len() - "bad line\n".len());
        let r = parse_bytes("uk", "f", text.as_bytes()).unwrap();
        assert_eq!(r.users.len(), 977);
        assert_eq!(r.users.get(5), "user5");
        assert!(r.user.iter().enumerate().all(|(i, &u)| u as usize == i % 977));
        assert!(r.item.iter().enumerate().all(|(i, &it)| it as usize == i % 313));
    }

    #[test]
    fn file_digest_is_the_digest_read_ratings_records() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        // blake3's published digest of the empty input
        assert_eq!(file_digest(&empty).unwrap(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
        // beyond 1 MiB read_ratings hashes in parallel, and file_digest streams: still one digest
        let big = dir.path().join("uk_5core.txt");
        let mut text = String::from("userId itemId rate date\n");
        for i in 0..120_000 {
            text.push_str(&format!("u{} i{} 4.0 2020-01-02\n", i % 977, i % 313));
        }
        assert!(text.len() > 2 << 20);
        std::fs::write(&big, &text).unwrap();
        let gz = dir.path().join("de_5core.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(SAMPLE.as_bytes()).unwrap();
        enc.finish().unwrap();
        let r = read_ratings(&[
            Source { market: "uk".into(), path: big.clone() },
            Source { market: "de".into(), path: gz.clone() },
        ])
        .unwrap();
        assert_eq!(file_digest(&big).unwrap(), r.files[0].blake3);
        assert_eq!(file_digest(&big).unwrap(), blake3::hash(text.as_bytes()).to_hex().to_string());
        assert_eq!(file_digest(&gz).unwrap(), r.files[1].blake3); // the compressed bytes, not the text
        let huge = dir.path().join("huge.bin");
        let bytes: Vec<u8> = (0..(40u32 << 20) + 12_345).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        std::fs::write(&huge, &bytes).unwrap(); // several 16 MiB blocks and a partial one
        assert_eq!(file_digest(&huge).unwrap(), blake3::hash(&bytes).to_hex().to_string());
        let missing = dir.path().join("missing.txt");
        let err = file_digest(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.txt"), "{err}");
    }

    #[test]
    fn reads_gzip_and_shares_vocab_across_markets() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("ratings_de_Electronics.txt.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(b"x i2 5.0 2020-01-01\nu1 i1 1.0 2020-01-01\n").unwrap();
        enc.finish().unwrap();
        let plain = dir.path().join("uk_5core.txt");
        std::fs::write(&plain, SAMPLE).unwrap();
        let r = read_ratings(&[
            Source { market: "uk".into(), path: plain },
            Source { market: "de".into(), path: gz.clone() },
        ])
        .unwrap();
        assert_eq!(r.markets, ["uk", "de"]);
        assert_eq!(r.market, vec![0, 0, 0, 1, 1]);
        assert_eq!(r.item, vec![0, 0, 1, 1, 0]);
        assert_eq!(r.user, vec![0, 1, 0, 2, 0]);
        assert!(r.files[1].gzip && !r.files[1].had_header);

        // A truncated gzip is a clean, named error.
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() - 12]).unwrap();
        let err = read_ratings(&[Source { market: "de".into(), path: gz.clone() }]).unwrap_err();
        assert!(err.to_string().contains("truncated gzip"), "{err}");
        let missing = read_ratings(&[Source { market: "de".into(), path: dir.path().join("nope.txt") }]).unwrap_err();
        assert!(missing.to_string().contains("nope.txt"), "{missing}");
    }

    #[test]
    fn a_utf8_byte_order_mark_is_skipped() {
        let plain = parse_bytes("uk", "f.txt", SAMPLE.as_bytes()).unwrap();
        let with_bom = [UTF8_BOM, SAMPLE.as_bytes()].concat();
        let r = parse_bytes("uk", "f.txt", &with_bom).unwrap();
        assert!(r.files[0].had_header);
        assert_eq!((&r.users, &r.items, &r.user, &r.item, &r.rating, &r.day),
                   (&plain.users, &plain.items, &plain.user, &plain.item, &plain.rating, &plain.day));
        // Without a header too, and line numbers still count from the first line.
        let raw = [UTF8_BOM, b"u1 i1 5 2020-01-02\nu2 i2 x 2020-01-02\n"].concat();
        assert_eq!(err_of(&raw), "f.txt:2: non-numeric rating \"x\"");
        let r = parse_bytes("uk", "f.txt", &[UTF8_BOM, b"u1 i1 5 2020-01-02\n"].concat()).unwrap();
        assert_eq!(r.users.iter().collect::<Vec<_>>(), ["u1"]);
        // Only at the start: a mark inside the data is an error naming its line, never part of an id.
        let inside = "a byte-order mark (U+FEFF) inside the file, not at its start (files joined with `cat`?); remove it";
        let joined = [b"u1 i1 5 2020-01-02\n", UTF8_BOM, b"u2 i1 5 2020-01-02\n"].concat();
        assert_eq!(err_of(&joined), format!("f.txt:2: {inside}"));
        assert_eq!(err_of(&[b"u1 i1 5 2020-01-02\nu2 i", UTF8_BOM, b"1 5 2020-01-02\n"].concat()), format!("f.txt:2: {inside}"));
        assert_eq!(err_of(&[b"userId itemId rate date\n\n", UTF8_BOM, b"u2 i1 5 2020-01-02\n"].concat()), format!("f.txt:3: {inside}"));
        // An earlier bad line is still the one reported; a mark after a leading mark is still inside.
        assert!(err_of(&[b"u1 i1 x 2020-01-02\n", UTF8_BOM, b"u2 i1 5 2020-01-02\n"].concat()).starts_with("f.txt:1: non-numeric"));
        assert_eq!(err_of(&[UTF8_BOM, UTF8_BOM, b"u1 i1 5 2020-01-02\n"].concat()), format!("f.txt:1: {inside}"));
        // Across parallel chunks, the line number is still the file's.
        let mut long = String::new();
        for i in 0..200_000 {
            long.push_str(&format!("user{} item{} 4.0 2020-01-01\n", i % 977, i % 313));
        }
        let long = [long.as_bytes(), UTF8_BOM, b"u i 1 2020-01-01\n"].concat();
        assert_eq!(err_of(&long), format!("f.txt:200001: {inside}"));
        // A BOM alone is an empty file.
        assert_eq!(err_of(UTF8_BOM), "f.txt: no ratings in file (empty, or only a header)");
        assert_eq!(
            err_of(b"\xff\xfeu\x001\x00"),
            "f.txt: UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        );
    }

    #[test]
    fn an_empty_gz_file_is_not_a_gzip_archive() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("ratings_uk_Electronics.txt.gz");
        std::fs::write(&gz, b"").unwrap();
        let err = read_ratings(&[Source { market: "uk".into(), path: gz.clone() }]).unwrap_err().to_string();
        assert_eq!(err, format!("{}: empty file (0 bytes), not a gzip archive; re-download the file", gz.display()));
        // A plain empty file still says it has no ratings.
        let txt = dir.path().join("uk_5core.txt");
        std::fs::write(&txt, b"").unwrap();
        let err = read_ratings(&[Source { market: "uk".into(), path: txt }]).unwrap_err().to_string();
        assert!(err.ends_with("no ratings in file (empty, or only a header)"), "{err}");
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::rng::Rng::new(5);
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let alphabet = b"ab1 .\n\t-2020\r\xff,";
                    alphabet[rng.below(alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse_bytes("uk", "fuzz", &bytes);
        }
    }
}

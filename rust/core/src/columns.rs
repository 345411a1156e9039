//! Ratings given as columns already in memory (a Parquet file the caller read with Arrow).
//!
//! Strings come as Arrow's layout — one UTF-8 data buffer and `len + 1` offsets (int32 or int64)
//! — so they are borrowed from Arrow without a copy. Rows are interned in parallel chunks and
//! merged exactly as parsed text is ([`crate::parse::merge_chunks`]), so a table shares the
//! vocabularies of the other inputs of the same [`crate::parse::read_inputs`] call and numbers
//! ids by first appearance.

use crate::delimited::{empty_id, parse_time};
use crate::error::{Error, Result};
use crate::parse::{bad_market_message, merge_chunks, no_ratings, valid_market_name, Chunk, ChunkError, LocalInterner, Ratings};
use rayon::prelude::*;
use std::path::Path;

/// Arrow string offsets: `string` has int32, `large_string` int64.
#[derive(Clone, Copy, Debug)]
pub enum Offsets<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
}

impl Offsets<'_> {
    fn len(&self) -> usize {
        match self {
            Offsets::I32(o) => o.len(),
            Offsets::I64(o) => o.len(),
        }
    }

    #[inline]
    fn at(&self, i: usize) -> i64 {
        match self {
            Offsets::I32(o) => o[i] as i64,
            Offsets::I64(o) => o[i],
        }
    }
}

/// A column of strings in Arrow's layout (no nulls).
#[derive(Clone, Copy, Debug)]
pub struct StrColumn<'a> {
    pub data: &'a [u8],
    pub offsets: Offsets<'a>,
}

impl<'a> StrColumn<'a> {
    pub fn rows(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Checks the offsets and that every value is UTF-8; returns the data as text.
    fn text(&self, path: &Path, role: &str) -> Result<&'a str> {
        let n = self.offsets.len();
        if n == 0 {
            return Err(Error::invalid(format!("{}: `{role}` has no offsets", path.display())));
        }
        let ok = (0..n).all(|i| {
            let o = self.offsets.at(i);
            o >= 0 && o as usize <= self.data.len() && (i == 0 || o >= self.offsets.at(i - 1))
        });
        if !ok {
            return Err(Error::invalid(format!("{}: `{role}` offsets are not ascending within the data", path.display())));
        }
        let text = std::str::from_utf8(self.data)
            .map_err(|e| Error::file(path, format!("{role} is not valid UTF-8 (at byte {})", e.valid_up_to())))?;
        if let Some(i) = (0..n).find(|&i| !text.is_char_boundary(self.offsets.at(i) as usize)) {
            return Err(Error::file(path, format!("row {}: {role} is not valid UTF-8", i.max(1))));
        }
        Ok(text)
    }

    #[inline]
    fn get(&self, text: &'a str, i: usize) -> &'a str {
        &text[self.offsets.at(i) as usize..self.offsets.at(i + 1) as usize]
    }
}

/// The time of each row: days since 1970-01-01 already, or text parsed as delimited files' times.
#[derive(Clone, Copy, Debug)]
pub enum TimeColumn<'a> {
    Days(&'a [i32]),
    Text(StrColumn<'a>),
}

/// One batch of rows (a Parquet row group, an Arrow chunk). `rating` None: every row is 1.0;
/// `market` None: the input's market is given.
#[derive(Clone, Copy, Debug)]
pub struct ColumnBatch<'a> {
    pub user: StrColumn<'a>,
    pub item: StrColumn<'a>,
    pub rating: Option<&'a [f32]>,
    pub time: TimeColumn<'a>,
    pub market: Option<StrColumn<'a>>,
}

/// Rows per parallel chunk: the fewest worth a task, and at most so many (bounded local tables).
const MIN_CHUNK_ROWS: usize = 1 << 12;
const MAX_CHUNK_ROWS: usize = 1 << 22;

/// Appends the batches' rows to `out` in `market`, or each row's market column where None.
pub(crate) fn add_columns(out: &mut Ratings, market: Option<u16>, path: &Path, batches: &[ColumnBatch<'_>]) -> Result<u64> {
    let mut chunks = Vec::new();
    let mut first_row = 0usize;
    for b in batches {
        let rows = b.user.rows();
        let mut lens = vec![("user", rows), ("item", b.item.rows())];
        if let Some(r) = b.rating {
            lens.push(("rating", r.len()));
        }
        lens.push(("time", match b.time { TimeColumn::Days(d) => d.len(), TimeColumn::Text(t) => t.rows() }));
        if let Some(m) = &b.market {
            lens.push(("market", m.rows()));
        }
        crate::error::check_same_len(&format!("{}: columns", path.display()), &lens)?;
        if market.is_none() && b.market.is_none() {
            return Err(Error::file(path, "no market given for this file and no market column"));
        }
        let users = b.user.text(path, "user id")?;
        let items = b.item.text(path, "item id")?;
        let times = match b.time {
            TimeColumn::Text(t) => Some(t.text(path, "time")?),
            TimeColumn::Days(_) => None,
        };
        let markets = match (market, &b.market) {
            (None, Some(m)) => Some(m.text(path, "market")?),
            _ => None,
        };
        let step = rows.div_ceil(rayon::current_num_threads() * 4).clamp(MIN_CHUNK_ROWS, MAX_CHUNK_ROWS);
        let batch_chunks: Vec<std::result::Result<Chunk<&str>, ChunkError>> = (0..rows)
            .step_by(step)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|start| {
                let end = (start + step).min(rows);
                let mut c = Chunk::with_capacity(end - start);
                let mut us = LocalInterner::new((end - start) / 4);
                let mut is = LocalInterner::new((end - start) / 4);
                let mut ms = LocalInterner::new(8);
                for i in start..end {
                    let fail = |message: String| ChunkError { line_start: first_row + i, message };
                    let r = b.rating.map_or(1.0, |r| r[i]);
                    if !r.is_finite() {
                        return Err(fail(format!("rating {r} is not a finite number")));
                    }
                    let d = match (b.time, times) {
                        (TimeColumn::Days(d), _) => d[i],
                        (TimeColumn::Text(t), Some(text)) => parse_time(t.get(text, i).as_bytes()).map_err(fail)?,
                        _ => unreachable!("text times come with their text"),
                    };
                    if let (Some(m), Some(text)) = (&b.market, markets) {
                        let (id, new) = ms.intern_new(m.get(text, i));
                        if new && !valid_market_name(ms.keys[id as usize]) {
                            return Err(fail(bad_market_message(ms.keys[id as usize])));
                        }
                        c.market.push(u16::try_from(id).map_err(|_| fail("more than 65535 markets".into()))?);
                    }
                    let (u, it) = (b.user.get(users, i), b.item.get(items, i));
                    if let Some(role) = empty_id(u, it) {
                        return Err(fail(format!("empty {role} id")));
                    }
                    c.user.push(us.intern(u));
                    c.item.push(is.intern(it));
                    c.rating.push(r);
                    c.day.push(d);
                }
                c.user_keys = us.keys;
                c.item_keys = is.keys;
                c.market_keys = ms.keys;
                Ok(c)
            })
            .collect();
        for c in batch_chunks {
            chunks.push(c.map_err(|e| Error::file(path, format!("row {}: {}", e.line_start + 1, e.message)))?);
        }
        first_row += rows;
    }
    if first_row == 0 {
        return Err(no_ratings(path));
    }
    merge_chunks(out, &chunks, market)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{read_inputs, Content, Input};

    /// Arrow's layout of some strings.
    fn arrow(values: &[&str]) -> (Vec<u8>, Vec<i32>) {
        let mut data = Vec::new();
        let mut offsets = vec![0];
        for v in values {
            data.extend_from_slice(v.as_bytes());
            offsets.push(data.len() as i32);
        }
        (data, offsets)
    }

    #[test]
    fn columns_share_vocabularies_with_text_files() {
        let dir = tempfile::tempdir().unwrap();
        let xm = dir.path().join("uk_5core.txt");
        std::fs::write(&xm, "userId itemId rate date\nu1 i1 5.0 2020-01-02\n").unwrap();
        let pq = dir.path().join("t.parquet");
        std::fs::write(&pq, b"stand-in bytes").unwrap();
        let (ud, uo) = arrow(&["u2", "u1", "u2"]);
        let (id, io) = arrow(&["i1", "i9", "i9"]);
        let (md, mo) = arrow(&["north", "south", "north"]);
        let uo64: Vec<i64> = uo.iter().map(|&o| o as i64).collect();
        let (td, to) = arrow(&["2020-01-02", "86400", "2020-01-01T00:00"]);
        let batch = ColumnBatch {
            user: StrColumn { data: &ud, offsets: Offsets::I64(&uo64) },
            item: StrColumn { data: &id, offsets: Offsets::I32(&io) },
            rating: Some(&[1.0, 2.0, 3.0]),
            time: TimeColumn::Text(StrColumn { data: &td, offsets: Offsets::I32(&to) }),
            market: Some(StrColumn { data: &md, offsets: Offsets::I32(&mo) }),
        };
        let days = [7, 8];
        let second = ColumnBatch { time: TimeColumn::Days(&days), rating: None, market: None, ..batch };
        let second = ColumnBatch {
            user: StrColumn { data: &ud, offsets: Offsets::I64(&uo64[1..]) },
            item: StrColumn { data: &id, offsets: Offsets::I32(&io[1..]) },
            ..second
        };
        let r = read_inputs(&[
            Input { market: Some("uk".into()), content: Content::Xmarket(xm) },
            Input { market: None, content: Content::Columns(pq.clone(), vec![batch]) },
            Input { market: Some("west".into()), content: Content::Columns(pq.clone(), vec![second]) },
        ])
        .unwrap();
        assert_eq!(r.markets, ["uk", "north", "south", "west"]);
        assert_eq!(r.market, vec![0, 1, 2, 1, 3, 3]);
        assert_eq!(r.user, vec![0, 1, 0, 1, 0, 1]);
        assert_eq!(r.item, vec![0, 0, 1, 1, 1, 1]);
        assert_eq!(r.rating, vec![5.0, 1.0, 2.0, 3.0, 1.0, 1.0]);
        assert_eq!(r.day, vec![18263, 18263, 1, 18262, 7, 8]);
        assert_eq!(r.files[1].market, "north,south");
        assert_eq!(r.files[1].blake3, crate::parse::file_digest(&pq).unwrap());
        assert_eq!((r.files[1].rows, r.files[1].bytes), (3, 14));

        // Errors name the file and the row.
        let (bd, bo) = arrow(&["ok", "no way"]);
        let (ed, eo) = arrow(&["a", ""]);
        let (ud, uo) = arrow(&["a", "b"]);
        let bad = ColumnBatch {
            user: StrColumn { data: &ud, offsets: Offsets::I32(&uo) },
            item: StrColumn { data: &ud, offsets: Offsets::I32(&uo) },
            rating: None,
            time: TimeColumn::Days(&days),
            market: Some(StrColumn { data: &bd, offsets: Offsets::I32(&bo) }),
        };
        let err = |batch: ColumnBatch, market: Option<&str>| {
            read_inputs(&[Input { market: market.map(String::from), content: Content::Columns(pq.clone(), vec![batch]) }])
                .unwrap_err()
                .to_string()
        };
        let p = pq.display();
        assert_eq!(err(bad, None), format!("{p}: row 2: market name \"no way\" is not valid: use letters, digits, `_` and `-` only"));
        assert_eq!(err(ColumnBatch { rating: Some(&[1.0, f32::NAN]), ..bad }, Some("uk")), format!("{p}: row 2: rating NaN is not a finite number"));
        let blank = StrColumn { data: &ed, offsets: Offsets::I32(&eo) };
        assert_eq!(err(ColumnBatch { item: blank, ..bad }, Some("uk")), format!("{p}: row 2: empty item id"));
        let (td, to) = arrow(&["2020-01-01", "soon"]);
        let text_time = TimeColumn::Text(StrColumn { data: &td, offsets: Offsets::I32(&to) });
        assert_eq!(
            err(ColumnBatch { time: text_time, ..bad }, Some("uk")),
            format!("{p}: row 2: unparsable time \"soon\" (expected YYYY-MM-DD or Unix seconds)")
        );
        assert_eq!(err(ColumnBatch { market: None, ..bad }, None), format!("{p}: no market given for this file and no market column"));
        assert!(err(ColumnBatch { rating: Some(&[1.0]), ..bad }, Some("uk")).contains("`rating` has 1 entries"));
        let empty = [0i32];
        let none = StrColumn { data: b"", offsets: Offsets::I32(&empty) };
        let no_rows = ColumnBatch { user: none, item: none, rating: None, time: TimeColumn::Days(&[]), market: None };
        assert_eq!(err(no_rows, Some("uk")), format!("{p}: no ratings in file (empty, or only a header)"));
        let split = [0i32, 1, 2];
        let bad_utf8 = StrColumn { data: "é".as_bytes(), offsets: Offsets::I32(&split) };
        assert!(err(ColumnBatch { user: bad_utf8, ..bad }, Some("uk")).contains("user id is not valid UTF-8"));
    }

    #[test]
    fn many_rows_are_numbered_by_first_appearance() {
        let values: Vec<String> = (0..300_000).map(|i| format!("u{}", i % 977)).collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let (d, o) = arrow(&refs);
        let days = vec![0i32; refs.len()];
        let dir = tempfile::tempdir().unwrap();
        let pq = dir.path().join("t.parquet");
        std::fs::write(&pq, b"x").unwrap();
        let col = StrColumn { data: &d, offsets: Offsets::I32(&o) };
        let batch = ColumnBatch { user: col, item: col, rating: None, time: TimeColumn::Days(&days), market: None };
        let r = read_inputs(&[Input { market: Some("uk".into()), content: Content::Columns(pq, vec![batch]) }]).unwrap();
        assert_eq!(r.users.len(), 977);
        assert!(r.user.iter().enumerate().all(|(i, &u)| u as usize == i % 977));
    }
}

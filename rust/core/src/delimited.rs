//! Delimited text with a header (CSV, TSV, RecBole `.inter`, ...) read through a column mapping.
//!
//! The first non-blank line is the header. Each role (user, item, time, and optionally rating and
//! market) has a list of accepted header names; the first of them present in the header wins,
//! and a header field written `name:type` (RecBole atomic files: `user_id:token`) also answers to
//! `name`. Other columns are ignored. Fields follow RFC 4180: a field may be quoted, a quote
//! inside it is doubled, and delimiters inside quotes are data. Newlines inside quoted fields are
//! *not* supported: a quote still open at the end of its line is an error naming that line (a
//! chunk holding a quote is split field by field to the end of each line, so such a field is
//! found even in a column nobody mapped). Times are `YYYY-MM-DD` (optionally followed by `T` or
//! a space and a time of day, which is ignored) or Unix seconds, integer or decimal, giving
//! `floor(seconds / 86400)` days since 1970-01-01 — the same day XMarket's date gives for the
//! same moment in UTC.
//!
//! Parsing reuses [`crate::parse`]'s machinery: gzip detection and byte-order marks, parallel
//! chunks on line boundaries with local interners merged in order (so ids are numbered by first
//! appearance exactly as for XMarket files), and its one-line errors naming file and line.

use crate::error::{Error, Result};
use crate::parse::{
    bad_market_message, each_line, merge_chunks, no_ratings, parse_date, parse_lines, text_body, valid_market_name,
    Chunk, ChunkError, LocalInterner, Ratings,
};
use std::borrow::Cow;
use std::path::Path;

/// The delimiters a [`DelimitedSpec`] may use.
pub const DELIMITERS: [u8; 4] = [b',', b'\t', b';', b'|'];

/// Accepted header names of an optional column; `required` makes its absence an error (names a
/// user gave), otherwise an absent column is no column (defaults looked for).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptionalColumn {
    pub names: Vec<String>,
    pub required: bool,
}

/// How to read one delimited file: its delimiter and, per role, the header names it accepts.
#[derive(Clone, Debug, PartialEq)]
pub struct DelimitedSpec {
    pub delimiter: u8,
    pub user: Vec<String>,
    pub item: Vec<String>,
    pub time: Vec<String>,
    /// No column (none of the names present, or no names): every rating is 1.0.
    pub rating: OptionalColumn,
    /// Each row's market; only consulted for an input given without a market, where it must be found.
    pub market: OptionalColumn,
}

/// Days since 1970-01-01 of a time field: `YYYY-MM-DD[(T| )time of day]` or Unix seconds.
pub fn parse_time(field: &[u8]) -> std::result::Result<i32, String> {
    let s = field.trim_ascii();
    let bad = || {
        format!(
            "unparsable time {:?} (expected YYYY-MM-DD or Unix seconds)",
            String::from_utf8_lossy(s)
        )
    };
    if s.len() >= 10 && s[4] == b'-' {
        if s.len() > 10 && !matches!(s[10], b'T' | b' ') {
            return Err(bad());
        }
        return parse_date(&s[..10]);
    }
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if !digits.is_empty() && digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        let v = digits.iter().fold(0i64, |acc, &b| acc * 10 + (b - b'0') as i64);
        let v = if digits.len() < s.len() { -v } else { v };
        return i32::try_from(v.div_euclid(86_400)).map_err(|_| bad());
    }
    let v: f64 = std::str::from_utf8(s).ok().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    let day = (v / 86_400.0).floor();
    if !day.is_finite() || day < i32::MIN as f64 || day > i32::MAX as f64 {
        return Err(bad());
    }
    Ok(day as i32)
}

/// Splits `line` into fields (RFC 4180 quoting) until `want` are found or the line ends.
/// Borrowed where possible; a quoted field with doubled quotes is unescaped into an owned one.
fn split_line<'a>(line: &'a [u8], delim: u8, want: usize, fields: &mut Vec<Cow<'a, [u8]>>) -> std::result::Result<(), String> {
    fields.clear();
    let mut i = 0;
    while fields.len() < want {
        if i < line.len() && line[i] == b'"' {
            let mut owned: Option<Vec<u8>> = None;
            let (mut j, mut seg) = (i + 1, i + 1);
            loop {
                let Some(k) = memchr::memchr(b'"', &line[j..]) else {
                    return Err("unterminated quoted field: no closing quote on this line \
                                (newlines inside quoted fields are not supported)"
                        .into());
                };
                let q = j + k;
                if line.get(q + 1) == Some(&b'"') {
                    owned.get_or_insert_with(Vec::new).extend_from_slice(&line[seg..=q]);
                    j = q + 2;
                    seg = j;
                    continue;
                }
                fields.push(match owned.take() {
                    Some(mut buf) => {
                        buf.extend_from_slice(&line[seg..q]);
                        Cow::Owned(buf)
                    }
                    None => Cow::Borrowed(&line[i + 1..q]),
                });
                i = q + 1;
                break;
            }
            if i == line.len() {
                return Ok(());
            }
            if line[i] != delim {
                return Err(format!(
                    "unexpected {:?} after a closing quote (a quote inside a quoted field is written twice: \"\")",
                    line[i] as char
                ));
            }
            i += 1;
        } else {
            let end = memchr::memchr(delim, &line[i..]).map_or(line.len(), |k| i + k);
            fields.push(Cow::Borrowed(&line[i..end]));
            if end == line.len() {
                return Ok(());
            }
            i = end + 1;
        }
    }
    Ok(())
}

fn to_str<'a>(field: Cow<'a, [u8]>, role: &str) -> std::result::Result<Cow<'a, str>, String> {
    let bad = |e: std::str::Utf8Error| format!("{role} is not valid UTF-8 (invalid byte at column {})", e.valid_up_to() + 1);
    match field {
        Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(bad),
        Cow::Owned(v) => String::from_utf8(v).map(Cow::Owned).map_err(|e| bad(e.utf8_error())),
    }
}

/// Which of a row's ids is empty, if one is (an empty id is a gap in the data, never an id).
pub(crate) fn empty_id(user: &str, item: &str) -> Option<&'static str> {
    if user.is_empty() {
        Some("user")
    } else if item.is_empty() {
        Some("item")
    } else {
        None
    }
}

/// Header positions of the mapped columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub user: usize,
    pub item: usize,
    pub time: usize,
    pub rating: Option<usize>,
    pub market: Option<usize>,
    /// Fields a row needs: one past the last mapped column.
    pub need: usize,
}

/// The first of `names` present in `header` (exactly, or as the `name` of `name:type`).
fn find_column(header: &[String], names: &[String]) -> Option<usize> {
    names.iter().find_map(|n| {
        header
            .iter()
            .position(|h| h == n || h.rsplit_once(':').is_some_and(|(base, _)| base == n))
    })
}

fn missing(role: &str, names: &[String], header: &[String], what: &str) -> String {
    format!(
        "{what}column `{role}` not found in the header (tried: {}); the header's fields are: {}",
        names.join(", "),
        header.join(", ")
    )
}

/// Where each mapped column is in `header` (a delimited file's, or a Parquet schema's names), or
/// a message naming the column, the names tried and the header's fields. `market_given`: the
/// market column is not looked for.
pub fn layout(header: &[String], spec: &DelimitedSpec, market_given: bool) -> std::result::Result<Layout, String> {
    let required = |role: &str, names: &[String]| find_column(header, names).ok_or_else(|| missing(role, names, header, ""));
    let user = required("user", &spec.user)?;
    let item = required("item", &spec.item)?;
    let time = required("time", &spec.time)?;
    let rating = match find_column(header, &spec.rating.names) {
        None if spec.rating.required => return Err(missing("rating", &spec.rating.names, header, "")),
        found => found,
    };
    let market = if market_given {
        None
    } else {
        Some(find_column(header, &spec.market.names).ok_or_else(|| {
            missing("market", &spec.market.names, header, "no market given for this file and its market ")
        })?)
    };
    let need = [Some(user), Some(item), Some(time), rating, market].into_iter().flatten().max().unwrap_or(0) + 1;
    Ok(Layout { user, item, time, rating, market, need })
}

fn parse_chunk<'a>(text: &'a [u8], base: usize, delim: u8, lay: &Layout) -> std::result::Result<Chunk<Cow<'a, str>>, ChunkError> {
    let est = text.len() / 48 + 16;
    let mut users = LocalInterner::new(est / 4);
    let mut items = LocalInterner::new(est / 4);
    let mut markets: LocalInterner<Cow<'a, str>> = LocalInterner::new(8);
    let mut c = Chunk::with_capacity(est);
    if lay.market.is_some() {
        c.market.reserve(est);
    }
    // Lines of a chunk without a quote are split only as far as the mapped columns; with one,
    // whole lines, so that a quote left open in any column is an error on its own line.
    let want = if memchr::memchr(b'"', text).is_some() { usize::MAX } else { lay.need };
    let mut fields: Vec<Cow<'a, [u8]>> = Vec::with_capacity(lay.need + 1);
    each_line(text, base, |b| b.is_ascii_whitespace(), |line, fail| {
        split_line(line, delim, want, &mut fields).map_err(fail)?;
        if fields.len() < lay.need {
            return Err(fail(format!(
                "expected at least {} fields separated by {:?} (the mapped columns), found {}",
                lay.need,
                delim as char,
                fields.len()
            )));
        }
        let r = match lay.rating {
            None => 1.0,
            Some(i) => {
                let text = std::str::from_utf8(fields[i].trim_ascii()).unwrap_or("\u{fffd}");
                let r: f32 = text.parse().map_err(|_| fail(format!("non-numeric rating {text:?}")))?;
                if !r.is_finite() {
                    return Err(fail(format!("rating {text:?} is not a finite number")));
                }
                r
            }
        };
        let d = parse_time(&fields[lay.time]).map_err(fail)?;
        if let Some(i) = lay.market {
            let name = to_str(std::mem::take(&mut fields[i]), "market").map_err(fail)?;
            let (id, new) = markets.intern_new(name);
            if new && !valid_market_name(&markets.keys[id as usize]) {
                return Err(fail(bad_market_message(&markets.keys[id as usize])));
            }
            c.market.push(u16::try_from(id).map_err(|_| fail("more than 65535 markets".into()))?);
        }
        let u = to_str(std::mem::take(&mut fields[lay.user]), "user id").map_err(fail)?;
        let it = to_str(std::mem::take(&mut fields[lay.item]), "item id").map_err(fail)?;
        if let Some(role) = empty_id(&u, &it) {
            return Err(fail(format!("empty {role} id")));
        }
        c.user.push(users.intern(u));
        c.item.push(items.intern(it));
        c.rating.push(r);
        c.day.push(d);
        Ok(())
    })?;
    c.user_keys = users.keys;
    c.item_keys = items.keys;
    c.market_keys = markets.keys;
    Ok(c)
}

/// Parses one delimited file's content and appends its rows to `out`, in `market` or, where
/// None, the market each row's market column names. Returns (had a header, rows).
pub(crate) fn parse_into(out: &mut Ratings, market: Option<u16>, path: &Path, text: &[u8], spec: &DelimitedSpec) -> Result<(bool, u64)> {
    if !DELIMITERS.contains(&spec.delimiter) {
        return Err(Error::invalid(format!(
            "delimiter {:?} is not supported (use one of , tab ; |)",
            spec.delimiter as char
        )));
    }
    let text = text_body(path, text)?;
    // The header is the first non-blank line.
    let (mut pos, mut line_no) = (0, 1u64);
    let (header_line, body_start) = loop {
        if pos >= text.len() {
            return Err(no_ratings(path));
        }
        let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i);
        let line = &text[pos..end];
        if !line.iter().all(u8::is_ascii_whitespace) {
            break (line.strip_suffix(b"\r").unwrap_or(line), end + 1);
        }
        pos = end + 1;
        line_no += 1;
    };
    let mut fields = Vec::new();
    split_line(header_line, spec.delimiter, usize::MAX, &mut fields).map_err(|m| Error::parse(path, line_no, m))?;
    let header: Vec<String> = fields.iter().map(|f| String::from_utf8_lossy(f).trim().to_string()).collect();
    let lay = layout(&header, spec, market.is_some()).map_err(|m| Error::parse(path, line_no, m))?;
    let chunks = parse_lines(path, text, body_start, |chunk, base| parse_chunk(chunk, base, spec.delimiter, &lay))?;
    if chunks.iter().all(|c| c.user.is_empty()) {
        return Err(no_ratings(path));
    }
    Ok((true, merge_chunks(out, &chunks, market)?))
}

/// Parses delimited bytes already in memory (tests; `name` stands in for the path).
pub fn parse_bytes(market: Option<&str>, name: &str, text: &[u8], spec: &DelimitedSpec) -> Result<Ratings> {
    let mut out = Ratings::default();
    let fixed = market.map(|m| {
        out.markets.push(m.to_string());
        0u16
    });
    let path = Path::new(name);
    parse_into(&mut out, fixed, path, text, spec)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{read_inputs, Content, Input, BOM_INSIDE};
    use std::io::Write;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The Python side's defaults, written out.
    fn spec(delimiter: u8) -> DelimitedSpec {
        DelimitedSpec {
            delimiter,
            user: names(&["user", "userId", "user_id", "reviewerID"]),
            item: names(&["item", "itemId", "item_id", "asin"]),
            time: names(&["time", "timestamp", "date", "unixReviewTime"]),
            rating: OptionalColumn { names: names(&["rating", "rate", "overall"]), required: false },
            market: OptionalColumn { names: names(&["market"]), required: false },
        }
    }

    fn parse(text: &str) -> Result<Ratings> {
        parse_bytes(Some("uk"), "f.csv", text.as_bytes(), &spec(b','))
    }

    fn err_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const XM: &str = "userId itemId rate date\nu1 i1 5.0 2020-01-02\nu2 i1 4.0 2020-01-03\nu1 i2 3.5 2019-12-31\n";

    #[test]
    fn csv_with_odd_columns_matches_the_xmarket_file() {
        let xm = crate::parse::parse_bytes("uk", "uk_5core.txt", XM.as_bytes()).unwrap();
        let csv = "note,overall,asin,reviewerID,unixReviewTime\n\
                   \"a, b\",5.0,i1,u1,1577923200\n\
                   \"say \"\"hi\"\"\",4,\"i1\",u2,2020-01-03T10:00:00\n\
                   ,3.5,i2,u1,1577750400.75\n";
        let r = parse(csv).unwrap();
        assert_eq!((&r.users, &r.items, &r.user, &r.item, &r.rating, &r.day), (&xm.users, &xm.items, &xm.user, &xm.item, &xm.rating, &xm.day));
        assert_eq!(r.day, vec![18263, 18264, 18261]);
    }

    #[test]
    fn quoting_follows_rfc_4180() {
        let r = parse("user,item,time\n\"a,\"\"b\"\"\",\"\"\"\"\"\",0\nc\"d,x,0\n").unwrap();
        assert_eq!(r.users.iter().collect::<Vec<_>>(), ["a,\"b\"", "c\"d"]);
        assert_eq!(r.items.iter().collect::<Vec<_>>(), ["\"\"", "x"]);
        assert_eq!(err_of("user,item,time\nu,\"\",0\n"), "f.csv:2: empty item id");
        assert_eq!(err_of("user,item,time\nu,i,0\n,i,0\n"), "f.csv:3: empty user id");
        assert_eq!(r.rating, vec![1.0, 1.0]); // no rating column
        // Fields after the last mapped one may be quoted and hold anything but a newline.
        let r = parse("user,item,time,text\nu,i,0,\"x,\"\"y\"\",\"\r\n").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(
            err_of("user,item,time,text\nu,i,0,\"multi\nline\"\n"),
            "f.csv:2: unterminated quoted field: no closing quote on this line (newlines inside quoted fields are not supported)"
        );
        assert!(err_of("user,item,time\n\"u\"x,i,0\n").starts_with("f.csv:2: unexpected 'x' after a closing quote"));
    }

    #[test]
    fn recbole_inter_headers_answer_to_their_names() {
        let text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n7\t9\t4\t86399.9\n8\t9\t2\t-0.5\n";
        let r = parse_bytes(Some("t1"), "t1.inter", text.as_bytes(), &spec(b'\t')).unwrap();
        assert_eq!(r.users.iter().collect::<Vec<_>>(), ["7", "8"]);
        assert_eq!(r.day, vec![0, -1]);
        assert_eq!(r.rating, vec![4.0, 2.0]);
    }

    #[test]
    fn times_as_seconds_and_dates_agree() {
        for (text, day) in [
            ("2020-01-02", 18263),
            ("2020-01-02 23:59:59", 18263),
            ("1577923200", 18263),
            ("1578009599", 18263),
            ("1578009600", 18264),
            ("1577923200.5", 18263),
            ("-1", -1),
            ("-86400", -1),
            ("-86401", -2),
            ("0", 0),
            ("1.5e9", 17361),
        ] {
            assert_eq!(parse_time(text.as_bytes()), Ok(day), "{text}");
        }
        for bad in ["", "x", "2020/01/02", "2020-01-02X", "nan", "inf", "1e300", "2020-02-30"] {
            assert!(parse_time(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_file_line_and_what_was_tried() {
        assert_eq!(
            err_of("reviewer,asin,date\nu,i,0\n"),
            "f.csv:1: column `user` not found in the header (tried: user, userId, user_id, reviewerID); \
             the header's fields are: reviewer, asin, date"
        );
        let mut strict = spec(b',');
        strict.rating = OptionalColumn { names: names(&["stars"]), required: true };
        assert_eq!(
            parse_bytes(Some("uk"), "f.csv", b"\n\nuser,item,time,rating\nu,i,0,1\n", &strict).unwrap_err().to_string(),
            "f.csv:3: column `rating` not found in the header (tried: stars); the header's fields are: user, item, time, rating"
        );
        assert_eq!(
            err_of("user,item,time\nu,i,0\nu,i\n"),
            "f.csv:3: expected at least 3 fields separated by ',' (the mapped columns), found 2"
        );
        assert_eq!(err_of("user,item,time,rating\nu,i,0,1\nu,i,0,five\n"), "f.csv:3: non-numeric rating \"five\"");
        assert_eq!(err_of("user,item,time,rating\nu,i,0,inf\n"), "f.csv:2: rating \"inf\" is not a finite number");
        assert_eq!(
            err_of("user,item,time\nu,i,yesterday\n"),
            "f.csv:2: unparsable time \"yesterday\" (expected YYYY-MM-DD or Unix seconds)"
        );
        assert_eq!(err_of("user,item,time\n"), "f.csv: no ratings in file (empty, or only a header)");
        assert_eq!(err_of(""), "f.csv: no ratings in file (empty, or only a header)");
        assert_eq!(err_of("user,item,time\n\n\n"), "f.csv: no ratings in file (empty, or only a header)");
        let multi = |text: &str| parse_bytes(None, "all.csv", text.as_bytes(), &spec(b','));
        assert_eq!(
            multi("user,item,time,market\nu,i,0,uk\nu,i,0,east 1\n").unwrap_err().to_string(),
            "all.csv:3: market name \"east 1\" is not valid: use letters, digits, `_` and `-` only"
        );
        assert_eq!(
            multi("user,item,time\nu,i,0\n").unwrap_err().to_string(),
            "all.csv:1: no market given for this file and its market column `market` not found in the header \
             (tried: market); the header's fields are: user, item, time"
        );
        let bad_delim = DelimitedSpec { delimiter: b':', ..spec(b',') };
        assert!(parse_bytes(Some("uk"), "f", b"user:item:time\n", &bad_delim).unwrap_err().to_string().contains("not supported"));
    }

    #[test]
    fn a_market_column_numbers_markets_by_first_appearance() {
        let text = "market,user,item,time\nsouth,a,x,0\nnorth,b,x,1\nsouth,b,y,2\neast-1,a,y,3\n";
        let r = parse_bytes(None, "all.csv", text.as_bytes(), &spec(b',')).unwrap();
        assert_eq!(r.markets, ["south", "north", "east-1"]);
        assert_eq!(r.market, vec![0, 1, 0, 2]);
        // Given a market, the market column is not read.
        let r = parse_bytes(Some("uk"), "all.csv", text.as_bytes(), &spec(b',')).unwrap();
        assert_eq!(r.market, vec![0; 4]);
        assert!(valid_market_name("east-1") && valid_market_name("T_1"));
        assert!(!valid_market_name("") && !valid_market_name("a b") && !valid_market_name("ü") && !valid_market_name("a/b"));
    }

    #[test]
    fn line_numbers_and_numbering_survive_parallel_chunks() {
        let mut text = String::from("\u{feff}x;user;item;time\n");
        for i in 0..200_000 {
            text.push_str(&format!("\"q;{i}\";user{};item{};{}\n", i % 977, i % 313, i * 3600));
        }
        let r = parse_bytes(Some("uk"), "f", text.as_bytes(), &spec(b';')).unwrap();
        assert_eq!(r.users.len(), 977);
        assert!(r.user.iter().enumerate().all(|(i, &u)| u as usize == i % 977));
        assert!(r.item.iter().enumerate().all(|(i, &it)| it as usize == i % 313));
        assert!(r.day.iter().enumerate().all(|(i, &d)| d as usize == i / 24));
        text.push_str("u;i;0\n");
        assert_eq!(
            parse_bytes(Some("uk"), "f", text.as_bytes(), &spec(b';')).unwrap_err().to_string(),
            "f:200002: expected at least 4 fields separated by ';' (the mapped columns), found 3"
        );
        text.truncate(text.len() - 6);
        text.push_str("\u{feff}u;u;i;0\n");
        assert_eq!(parse_bytes(Some("uk"), "f", text.as_bytes(), &spec(b';')).unwrap_err().to_string(), format!("f:200002: {BOM_INSIDE}"));
    }

    #[test]
    fn gzip_files_share_vocabularies_with_xmarket_files_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let xm = dir.path().join("uk_5core.txt");
        std::fs::write(&xm, XM).unwrap();
        let gz = dir.path().join("all.csv.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(b"market|user|item|time\nde|u2|i3|2020-01-01\nuk|u9|i1|0\n").unwrap();
        enc.finish().unwrap();
        let r = read_inputs(&[
            Input { market: Some("uk".into()), content: Content::Xmarket(xm) },
            Input { market: None, content: Content::Delimited(gz.clone(), spec(b'|')) },
        ])
        .unwrap();
        assert_eq!(r.markets, ["uk", "de"]);
        assert_eq!(r.market, vec![0, 0, 0, 1, 0]);
        assert_eq!(r.user, vec![0, 1, 0, 1, 2]);
        assert_eq!(r.item, vec![0, 0, 1, 2, 0]);
        assert_eq!(r.files[1].market, "de,uk");
        assert!(r.files[1].gzip && r.files[1].had_header && r.files[1].rows == 2);
        assert_eq!(r.files[1].blake3, crate::parse::file_digest(&gz).unwrap());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::rng::Rng::new(7);
        for len in 0..400 {
            let bytes: Vec<u8> = std::iter::once(b"user,item,time\n".to_vec())
                .chain((0..len).map(|_| {
                    let alphabet = b"ab1 .\n\t-2020\r\xff,\"";
                    vec![alphabet[rng.below(alphabet.len() as u64) as usize]]
                }))
                .flatten()
                .collect();
            let _ = parse_bytes(None, "fuzz", &bytes, &spec(b','));
        }
    }
}

//! `xmfast.core`: the Python face of xmfast-core.
//!
//! This layer only converts: numpy arrays in (borrowed, no copy), `Vec`s out (moved into numpy
//! arrays, no copy), core errors to Python exceptions. All long work runs with the GIL released.

use numpy::ndarray::{Array2, Array3};
use numpy::{Element, IntoPyArray, PyArray1, PyArray2, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyArray3, PyReadonlyArrayDyn, PyReadwriteArray1, PyReadwriteArray2};
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyIndexError, PyKeyError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use xmfast_core as xc;
use xmfast_core::negatives::Csr;

create_exception!(
    xmfast.core,
    DataFormatError,
    PyValueError,
    "A rating file is malformed; the message names the file and, where there is one, the line."
);

/// Two or three numpy arrays returned together.
type Arrays2<'py, A, B> = (Bound<'py, A>, Bound<'py, B>);
type Arrays3<'py, A, B, C> = (Bound<'py, A>, Bound<'py, B>, Bound<'py, C>);

/// Maps a core error to the matching Python exception.
fn py_err(e: xc::Error) -> PyErr {
    let message = e.to_string();
    match e {
        xc::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        xc::Error::Io { .. } => PyOSError::new_err(message),
        xc::Error::Parse { .. } | xc::Error::File { .. } => DataFormatError::new_err(message),
        xc::Error::Invalid(_) => PyValueError::new_err(message),
    }
}

/// Borrows a 1-d array as a slice (it must be C-contiguous).
fn slice<'a, T: Element>(name: &str, a: &'a PyReadonlyArray1<'_, T>) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("`{name}` must be a C-contiguous 1-d array")))
}

fn csr<'a>(name: &str, offsets: &'a [u64], values: &'a [u32]) -> PyResult<Csr<'a>> {
    Csr::new(offsets, values).map_err(|e| PyValueError::new_err(format!("`{name}`: {e}")))
}

fn vec_to_py<'py, T: Element>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}

/// Moves a row-major `rows × width` buffer into a 2-d numpy array (no copy).
fn matrix_to_py<T: Element>(py: Python<'_>, v: Vec<T>, rows: usize, width: usize) -> PyResult<Bound<'_, PyArray2<T>>> {
    let a = Array2::from_shape_vec((rows, width), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// An interned list of id strings (users or items), numbered 0..len in first-appearance order.
/// The strings live in Rust; Python sees them on demand.
#[pyclass(module = "xmfast.core", frozen)]
struct Vocab {
    inner: xc::vocab::Vocab,
}

#[pymethods]
impl Vocab {
    #[new]
    #[pyo3(signature = (ids=None))]
    fn new(ids: Option<Vec<String>>) -> Self {
        let inner = ids.unwrap_or_default().iter().map(String::as_str).collect();
        Vocab { inner }
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __getitem__(&self, index: i64) -> PyResult<String> {
        let n = self.inner.len() as i64;
        let i = if index < 0 { index + n } else { index };
        if i < 0 || i >= n {
            return Err(PyIndexError::new_err(format!("index {index} out of range for {n} ids")));
        }
        Ok(self.inner.get(i as u32).to_string())
    }

    fn __contains__(&self, key: &str) -> bool {
        self.inner.index_of(key).is_some()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Vocab>().is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __repr__(&self) -> String {
        format!("Vocab(<{} ids>)", self.inner.len())
    }

    /// The number of `key` (KeyError if absent).
    fn index(&self, key: &str) -> PyResult<u32> {
        self.inner
            .index_of(key)
            .ok_or_else(|| PyKeyError::new_err(key.to_string()))
    }

    /// The number of `key`, or None.
    fn get(&self, key: &str) -> Option<u32> {
        self.inner.index_of(key)
    }

    /// Numbers of many keys; -1 for keys that are absent.
    fn encode<'py>(&self, py: Python<'py>, keys: Vec<String>) -> Bound<'py, PyArray1<i64>> {
        let v: Vec<i64> = keys
            .iter()
            .map(|k| self.inner.index_of(k).map_or(-1, |i| i as i64))
            .collect();
        vec_to_py(py, v)
    }

    fn to_list(&self) -> Vec<String> {
        self.inner.iter().map(str::to_string).collect()
    }

    /// A new vocabulary holding the ids numbered `keep`, in that order.
    fn subset(&self, keep: PyReadonlyArray1<'_, u32>) -> PyResult<Vocab> {
        let keep = slice("keep", &keep)?;
        if let Some(&bad) = keep.iter().find(|&&i| i as usize >= self.inner.len()) {
            return Err(PyIndexError::new_err(format!("id number {bad} out of range")));
        }
        Ok(Vocab { inner: self.inner.subset(keep) })
    }

    /// Stable 64-bit hashes of the id strings (used to key random streams by original ids).
    fn stable_hashes<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        vec_to_py(py, self.inner.stable_hashes())
    }

    /// Each id's position in ascending byte order of the strings: the tie-break keys of the
    /// `trec` policy (trec_eval orders tied documents by id, descending).
    fn order_keys<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u32>> {
        let inner = &self.inner;
        let keys = py.detach(|| inner.order_keys());
        vec_to_py(py, keys)
    }

    /// Writes the ids one per line (UTF-8) to `path`.
    fn write(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| {
            let mut text = String::with_capacity(inner.len() * 24);
            if let Some(bad) = inner.iter().position(|s| s.contains(['\n', '\r'])) {
                return Err(xc::Error::invalid(format!(
                    "{}: id number {bad} contains a line break and cannot be written one per line",
                    path.display()
                )));
            }
            for s in inner.iter() {
                text.push_str(s);
                text.push('\n');
            }
            std::fs::write(&path, text).map_err(|e| xc::Error::io(&path, e))
        })
        .map_err(py_err)
    }

    /// Reads ids written by `write`.
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf) -> PyResult<Vocab> {
        py.detach(|| {
            let text = std::fs::read_to_string(&path).map_err(|e| xc::Error::io(&path, e))?;
            let mut inner = xc::vocab::Vocab::new();
            for (line, id) in text.split_terminator('\n').enumerate() {
                if inner.intern(id) as usize != line {
                    return Err(xc::Error::parse(&path, line as u64 + 1, format!("id {id:?} appears twice")));
                }
            }
            Ok(Vocab { inner })
        })
        .map_err(py_err)
    }
}

/// blake3 of a file's bytes as stored on disk (hex), the digest ``read_ratings`` records for
/// each input; streamed, with the GIL released.
#[pyfunction]
fn file_digest(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    py.detach(|| xc::parse::file_digest(&path)).map_err(py_err)
}

/// Reads XMarket rating files into columns with shared user and item vocabularies.
///
/// `sources` is a list of (market, path). Returns a dict with `markets`, `users`, `items`
/// (Vocab), the columns `market` (uint16), `user`, `item` (uint32), `rating` (float32),
/// `day` (int32, days since 1970-01-01) and `files` (one dict per file).
#[pyfunction]
fn read_ratings<'py>(py: Python<'py>, sources: Vec<(String, PathBuf)>) -> PyResult<Bound<'py, PyDict>> {
    let sources: Vec<xc::parse::Source> = sources
        .into_iter()
        .map(|(market, path)| xc::parse::Source { market, path })
        .collect();
    let r = py.detach(|| xc::parse::read_ratings(&sources)).map_err(py_err)?;
    ratings_to_py(py, r)
}

fn ratings_to_py(py: Python<'_>, r: xc::parse::Ratings) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let files = PyList::empty(py);
    for f in &r.files {
        let fd = PyDict::new(py);
        fd.set_item("market", &f.market)?;
        fd.set_item("path", f.path.display().to_string())?;
        fd.set_item("bytes", f.bytes)?;
        fd.set_item("blake3", &f.blake3)?;
        fd.set_item("gzip", f.gzip)?;
        fd.set_item("had_header", f.had_header)?;
        fd.set_item("rows", f.rows)?;
        files.append(fd)?;
    }
    d.set_item("markets", r.markets)?;
    d.set_item("users", Vocab { inner: r.users })?;
    d.set_item("items", Vocab { inner: r.items })?;
    d.set_item("market", vec_to_py(py, r.market))?;
    d.set_item("user", vec_to_py(py, r.user))?;
    d.set_item("item", vec_to_py(py, r.item))?;
    d.set_item("rating", vec_to_py(py, r.rating))?;
    d.set_item("day", vec_to_py(py, r.day))?;
    d.set_item("files", files)?;
    Ok(d)
}

/// A key of an input dict, extracted; a missing key is a KeyError naming it.
fn key<'py, T>(d: &Bound<'py, PyDict>, name: &str) -> PyResult<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    let v = d.get_item(name)?.ok_or_else(|| PyKeyError::new_err(format!("input dict lacks `{name}`")))?;
    v.extract::<T>().map_err(|e| PyTypeError::new_err(format!("input `{name}`: {}", Into::<PyErr>::into(e))))
}

/// An optional key: absent or None is None.
fn opt_key<'py, T>(d: &Bound<'py, PyDict>, name: &str) -> PyResult<Option<T>>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    match d.get_item(name)? {
        Some(v) if !v.is_none() => Ok(Some(
            v.extract::<T>().map_err(|e| PyTypeError::new_err(format!("input `{name}`: {}", Into::<PyErr>::into(e))))?,
        )),
        _ => Ok(None),
    }
}

enum OffsetArray<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

/// A string column as Python passes it: (data uint8, offsets int32 or int64), borrowed.
struct StrArrays<'py> {
    data: PyReadonlyArray1<'py, u8>,
    offsets: OffsetArray<'py>,
}

impl<'py> StrArrays<'py> {
    fn from_py(v: Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        let bad = || PyTypeError::new_err(format!("`{name}`: expected (data uint8 array, offsets int32 or int64 array)"));
        let (data, offsets): (Bound<'py, PyAny>, Bound<'py, PyAny>) = v.extract().map_err(|_| bad())?;
        let data = data.extract::<PyReadonlyArray1<'py, u8>>().map_err(|_| bad())?;
        let offsets = match offsets.extract::<PyReadonlyArray1<'py, i32>>() {
            Ok(o) => OffsetArray::I32(o),
            Err(_) => OffsetArray::I64(offsets.extract::<PyReadonlyArray1<'py, i64>>().map_err(|_| bad())?),
        };
        Ok(StrArrays { data, offsets })
    }

    fn column(&self, name: &str) -> PyResult<xc::columns::StrColumn<'_>> {
        let offsets = match &self.offsets {
            OffsetArray::I32(o) => xc::columns::Offsets::I32(slice(name, o)?),
            OffsetArray::I64(o) => xc::columns::Offsets::I64(slice(name, o)?),
        };
        Ok(xc::columns::StrColumn { data: slice(name, &self.data)?, offsets })
    }
}

struct BatchArrays<'py> {
    user: StrArrays<'py>,
    item: StrArrays<'py>,
    rating: Option<PyReadonlyArray1<'py, f32>>,
    day: Option<PyReadonlyArray1<'py, i32>>,
    time_text: Option<StrArrays<'py>>,
    market: Option<StrArrays<'py>>,
}

impl<'py> BatchArrays<'py> {
    fn from_py(d: &Bound<'py, PyDict>) -> PyResult<Self> {
        let strings = |name: &str| -> PyResult<Option<StrArrays<'py>>> {
            d.get_item(name)?.filter(|v| !v.is_none()).map(|v| StrArrays::from_py(v, name)).transpose()
        };
        let need = |v: Option<StrArrays<'py>>, name: &str| v.ok_or_else(|| PyKeyError::new_err(format!("batch lacks `{name}`")));
        let batch = BatchArrays {
            user: need(strings("user")?, "user")?,
            item: need(strings("item")?, "item")?,
            rating: opt_key(d, "rating")?,
            day: opt_key(d, "day")?,
            time_text: strings("time_text")?,
            market: strings("market")?,
        };
        if batch.day.is_some() == batch.time_text.is_some() {
            return Err(PyValueError::new_err("a batch has either `day` (int32) or `time_text` (strings)"));
        }
        Ok(batch)
    }

    fn batch(&self) -> PyResult<xc::columns::ColumnBatch<'_>> {
        let time = match (&self.day, &self.time_text) {
            (Some(d), _) => xc::columns::TimeColumn::Days(slice("day", d)?),
            (None, Some(t)) => xc::columns::TimeColumn::Text(t.column("time_text")?),
            (None, None) => unreachable!("checked in from_py"),
        };
        Ok(xc::columns::ColumnBatch {
            user: self.user.column("user")?,
            item: self.item.column("item")?,
            rating: self.rating.as_ref().map(|r| slice("rating", r)).transpose()?,
            time,
            market: self.market.as_ref().map(|m| m.column("market")).transpose()?,
        })
    }
}

enum PyContent<'py> {
    Xmarket(PathBuf),
    Delimited(PathBuf, xc::delimited::DelimitedSpec),
    Columns(PathBuf, Vec<BatchArrays<'py>>),
}

fn optional_column(d: &Bound<'_, PyDict>, names: &str, required: &str) -> PyResult<xc::delimited::OptionalColumn> {
    Ok(xc::delimited::OptionalColumn {
        names: opt_key(d, names)?.unwrap_or_default(),
        required: opt_key(d, required)?.unwrap_or(false),
    })
}

/// A column mapping as an input dict gives it (see `read_inputs`).
fn delimited_spec(d: &Bound<'_, PyDict>, delimiter: u8) -> PyResult<xc::delimited::DelimitedSpec> {
    Ok(xc::delimited::DelimitedSpec {
        delimiter,
        user: key(d, "user")?,
        item: key(d, "item")?,
        time: key(d, "time")?,
        rating: optional_column(d, "rating", "rating_required")?,
        market: optional_column(d, "market_column", "market_required")?,
    })
}

/// Where the columns of a mapping (a dict as `read_inputs` takes) are among `header`'s names:
/// a dict role → index (`rating`, `market` None when absent), or DataFormatError whose message
/// names the column, the names tried and the header. The rule delimited files follow, for
/// Parquet schemas.
#[pyfunction]
fn map_columns<'py>(py: Python<'py>, header: Vec<String>, mapping: Bound<'py, PyDict>, market_given: bool) -> PyResult<Bound<'py, PyDict>> {
    let spec = delimited_spec(&mapping, b',')?;
    let lay = xc::delimited::layout(&header, &spec, market_given).map_err(DataFormatError::new_err)?;
    let d = PyDict::new(py);
    d.set_item("user", lay.user)?;
    d.set_item("item", lay.item)?;
    d.set_item("time", lay.time)?;
    d.set_item("rating", lay.rating)?;
    d.set_item("market", lay.market)?;
    Ok(d)
}

/// Reads inputs of several formats into one table with shared vocabularies (as `read_ratings`,
/// whose result dict it returns). Each input is a dict with `market` (str, or None where a market
/// column names each row's market), `path` and `kind`:
///
/// * `"xmarket"`: an XMarket file.
/// * `"delimited"`: `delimiter` (one of `,` tab `;` `|`), `user`, `item`, `time` (lists of
///   accepted header names, the first present wins; `name:type` fields answer to `name`),
///   `rating` and `market_column` (lists, may be empty) with `rating_required` and
///   `market_required` (bools: absence is an error; otherwise no column).
/// * `"columns"`: `batches`, a list of dicts with `user`, `item` (each (uint8 data, int32 or
///   int64 offsets), Arrow's string layout), `rating` (float32 or None: all 1.0), either `day`
///   (int32, days since 1970-01-01) or `time_text` (strings, parsed as delimited times), and
///   `market` (strings or None); `path` is the file they were read from (digest, messages).
///
/// Arrays are borrowed, not copied; parsing runs with the GIL released.
#[pyfunction]
fn read_inputs<'py>(py: Python<'py>, inputs: Vec<Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyDict>> {
    let mut held: Vec<(Option<String>, PyContent<'py>)> = Vec::with_capacity(inputs.len());
    for d in &inputs {
        let market: Option<String> = opt_key(d, "market")?;
        let path: PathBuf = key(d, "path")?;
        let kind: String = key(d, "kind")?;
        let content = match kind.as_str() {
            "xmarket" => PyContent::Xmarket(path),
            "delimited" => {
                let delimiter: String = key(d, "delimiter")?;
                let &[delimiter] = delimiter.as_bytes() else {
                    return Err(PyValueError::new_err(format!("delimiter {delimiter:?} is not one byte")));
                };
                PyContent::Delimited(path, delimited_spec(d, delimiter)?)
            }
            "columns" => {
                let batches: Vec<Bound<'py, PyDict>> = key(d, "batches")?;
                PyContent::Columns(path, batches.iter().map(BatchArrays::from_py).collect::<PyResult<_>>()?)
            }
            other => return Err(PyValueError::new_err(format!("unknown input kind {other:?}"))),
        };
        held.push((market, content));
    }
    let mut parsed = Vec::with_capacity(held.len());
    for (market, content) in &held {
        let content = match content {
            PyContent::Xmarket(p) => xc::parse::Content::Xmarket(p.clone()),
            PyContent::Delimited(p, spec) => xc::parse::Content::Delimited(p.clone(), spec.clone()),
            PyContent::Columns(p, batches) => {
                xc::parse::Content::Columns(p.clone(), batches.iter().map(BatchArrays::batch).collect::<PyResult<_>>()?)
            }
        };
        parsed.push(xc::parse::Input { market: market.clone(), content });
    }
    let r = py.detach(|| xc::parse::read_inputs(&parsed)).map_err(py_err)?;
    ratings_to_py(py, r)
}

/// Whether `name` may name a market (letters, digits, `_`, `-`): the core's one rule.
#[pyfunction]
fn check_market_name(name: &str) -> bool {
    xc::parse::valid_market_name(name)
}

/// Keep-mask of the k-core per market: users need `min_user` ratings, items `min_item`.
/// `fixpoint=False` makes one pass (items, then users) as FOREC's preprocessing did.
#[pyfunction]
#[pyo3(signature = (market, user, item, min_user, min_item, fixpoint=false))]
fn kcore_mask<'py>(
    py: Python<'py>,
    market: PyReadonlyArray1<'py, u16>,
    user: PyReadonlyArray1<'py, u32>,
    item: PyReadonlyArray1<'py, u32>,
    min_user: u32,
    min_item: u32,
    fixpoint: bool,
) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let (m, u, i) = (slice("market", &market)?, slice("user", &user)?, slice("item", &item)?);
    let mode = if fixpoint { xc::filter::KCoreMode::Fixpoint } else { xc::filter::KCoreMode::OnePass };
    let keep = py.detach(|| xc::filter::kcore(m, u, i, min_user, min_item, mode)).map_err(py_err)?;
    Ok(vec_to_py(py, keep))
}

/// Keep-mask of rows whose item is in `allowed`.
#[pyfunction]
fn restrict_items_mask<'py>(
    py: Python<'py>,
    item: PyReadonlyArray1<'py, u32>,
    allowed: PyReadonlyArray1<'py, u32>,
) -> PyResult<Bound<'py, PyArray1<bool>>> {
    let (i, a) = (slice("item", &item)?, slice("allowed", &allowed)?);
    Ok(vec_to_py(py, py.detach(|| xc::filter::restrict_to_items(i, a))))
}

/// Dense renumbering in first-appearance order: returns (new ids, old id of each new id).
#[pyfunction]
fn compact_ids<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, u32>,
) -> PyResult<Arrays2<'py, PyArray1<u32>, PyArray1<u32>>> {
    let ids = slice("ids", &ids)?;
    let (new, old) = py.detach(|| xc::filter::compact_ids(ids));
    Ok((vec_to_py(py, new), vec_to_py(py, old)))
}

/// Distinct items of each market as CSR: (offsets uint64, items uint32), one row per market.
#[pyfunction]
fn market_items<'py>(
    py: Python<'py>,
    market: PyReadonlyArray1<'py, u16>,
    item: PyReadonlyArray1<'py, u32>,
    n_markets: usize,
) -> PyResult<Arrays2<'py, PyArray1<u64>, PyArray1<u32>>> {
    let (m, i) = (slice("market", &market)?, slice("item", &item)?);
    if m.len() != i.len() {
        return Err(PyValueError::new_err("`market` and `item` differ in length"));
    }
    let c = py.detach(|| xc::protocol::market_items(m, i, n_markets));
    Ok((vec_to_py(py, c.offsets), vec_to_py(py, c.values)))
}

/// Leave-one-out split per (market, user). Returns a dict of arrays: `group_market`,
/// `group_user`, `train_rows`, `train_offsets`, `heldout_groups`, `valid_rows`, `test_rows`,
/// and `duplicates_dropped`. Row arrays index the input columns.
#[pyfunction]
#[pyo3(signature = (market, user, item, day, *, order="temporal", seed=0, dedup=false, min_interactions=3, market_keys=None, user_keys=None))]
#[allow(clippy::too_many_arguments)]
fn leave_one_out<'py>(
    py: Python<'py>,
    market: PyReadonlyArray1<'py, u16>,
    user: PyReadonlyArray1<'py, u32>,
    item: PyReadonlyArray1<'py, u32>,
    day: PyReadonlyArray1<'py, i32>,
    order: &str,
    seed: u64,
    dedup: bool,
    min_interactions: usize,
    market_keys: Option<PyReadonlyArray1<'py, u64>>,
    user_keys: Option<PyReadonlyArray1<'py, u64>>,
) -> PyResult<Bound<'py, PyDict>> {
    let order = match order {
        "temporal" => xc::split::Order::Temporal,
        "random" => xc::split::Order::Random { seed },
        other => return Err(PyValueError::new_err(format!("order must be 'temporal' or 'random', not {other:?}"))),
    };
    let (m, u, i, d) = (slice("market", &market)?, slice("user", &user)?, slice("item", &item)?, slice("day", &day)?);
    let mk = match &market_keys { Some(a) => slice("market_keys", a)?, None => &[][..] };
    let uk = match &user_keys { Some(a) => slice("user_keys", a)?, None => &[][..] };
    let options = xc::split::SplitOptions { order, dedup, min_interactions };
    let s = py.detach(|| xc::split::leave_one_out(m, u, i, d, mk, uk, options)).map_err(py_err)?;
    let out = PyDict::new(py);
    out.set_item("group_market", vec_to_py(py, s.group_market))?;
    out.set_item("group_user", vec_to_py(py, s.group_user))?;
    out.set_item("train_rows", vec_to_py(py, s.train_rows))?;
    out.set_item("train_offsets", vec_to_py(py, s.train_offsets))?;
    out.set_item("heldout_groups", vec_to_py(py, s.heldout_groups))?;
    out.set_item("valid_rows", vec_to_py(py, s.valid_rows))?;
    out.set_item("test_rows", vec_to_py(py, s.test_rows))?;
    out.set_item("duplicates_dropped", s.duplicates_dropped)?;
    Ok(out)
}

/// Samples the stored evaluation candidates (positive first, then `negatives` distinct items)
/// for validation and test under `protocol` ("forec" or "acmr"). Returns (valid, test), each
/// `heldout × (1 + negatives)` uint32.
#[pyfunction]
#[pyo3(signature = (*, group_market, group_user, train_offsets, train_items, heldout_groups, valid_item, test_item, market_item_offsets, market_items, protocol, negatives, seed, market_keys, user_keys, market_names, users))]
#[allow(clippy::too_many_arguments)]
fn eval_candidates<'py>(
    py: Python<'py>,
    group_market: PyReadonlyArray1<'py, u16>,
    group_user: PyReadonlyArray1<'py, u32>,
    train_offsets: PyReadonlyArray1<'py, u64>,
    train_items: PyReadonlyArray1<'py, u32>,
    heldout_groups: PyReadonlyArray1<'py, u32>,
    valid_item: PyReadonlyArray1<'py, u32>,
    test_item: PyReadonlyArray1<'py, u32>,
    market_item_offsets: PyReadonlyArray1<'py, u64>,
    market_items: PyReadonlyArray1<'py, u32>,
    protocol: &str,
    negatives: usize,
    seed: u64,
    market_keys: PyReadonlyArray1<'py, u64>,
    user_keys: PyReadonlyArray1<'py, u64>,
    market_names: Vec<String>,
    users: PyRef<'py, Vocab>,
) -> PyResult<Arrays2<'py, PyArray2<u32>, PyArray2<u32>>> {
    let protocol: xc::protocol::Protocol = protocol.parse().map_err(py_err)?;
    let gm = slice("group_market", &group_market)?;
    let gu = slice("group_user", &group_user)?;
    let held = xc::protocol::HeldOut {
        group_market: gm,
        group_user: gu,
        train_items: csr("train", slice("train_offsets", &train_offsets)?, slice("train_items", &train_items)?)?,
        heldout_groups: slice("heldout_groups", &heldout_groups)?,
        valid_item: slice("valid_item", &valid_item)?,
        test_item: slice("test_item", &test_item)?,
    };
    let mi = csr("market_items", slice("market_item_offsets", &market_item_offsets)?, slice("market_items", &market_items)?)?;
    let (mk, uk) = (slice("market_keys", &market_keys)?, slice("user_keys", &user_keys)?);
    let vocab = &users.inner;
    let describe = |g: usize| {
        let market = market_names.get(gm[g] as usize).map_or("?", String::as_str);
        let user = vocab.try_get(gu[g]).unwrap_or("?");
        format!("market {market}, user {user}")
    };
    let c = py
        .detach(|| xc::protocol::eval_candidates(&held, mi, protocol, negatives, seed, mk, uk, &describe))
        .map_err(py_err)?;
    let rows = held.heldout_groups.len();
    Ok((matrix_to_py(py, c.valid, rows, c.width)?, matrix_to_py(py, c.test, rows, c.width)?))
}

/// Low-level sampler of distinct negatives: query `q` draws `n` items from pool
/// `query_pool[q]` (a row of the pools CSR, sorted unique) minus exclusion row `q` (sorted).
#[pyfunction]
#[pyo3(signature = (pool_offsets, pool_items, query_pool, exclude_offsets, exclude_items, query_keys, n, seed))]
#[allow(clippy::too_many_arguments)]
fn sample_distinct<'py>(
    py: Python<'py>,
    pool_offsets: PyReadonlyArray1<'py, u64>,
    pool_items: PyReadonlyArray1<'py, u32>,
    query_pool: PyReadonlyArray1<'py, u32>,
    exclude_offsets: PyReadonlyArray1<'py, u64>,
    exclude_items: PyReadonlyArray1<'py, u32>,
    query_keys: PyReadonlyArray1<'py, u64>,
    n: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyArray2<u32>>> {
    let pools = csr("pool", slice("pool_offsets", &pool_offsets)?, slice("pool_items", &pool_items)?)?;
    for p in 0..pools.rows() {
        if pools.row(p).windows(2).any(|w| w[0] >= w[1]) {
            return Err(PyValueError::new_err(format!("pool {p} is not sorted and unique")));
        }
    }
    let exclude = csr("exclude", slice("exclude_offsets", &exclude_offsets)?, slice("exclude_items", &exclude_items)?)?;
    for q in 0..exclude.rows() {
        if exclude.row(q).windows(2).any(|w| w[0] > w[1]) {
            return Err(PyValueError::new_err(format!("exclusion row {q} is not sorted")));
        }
    }
    let (qp, keys) = (slice("query_pool", &query_pool)?, slice("query_keys", &query_keys)?);
    let describe = |q: usize| format!("query {q}");
    let out = py
        .detach(|| xc::negatives::sample_distinct(pools, qp, exclude, keys, n, seed, &describe))
        .map_err(py_err)?;
    matrix_to_py(py, out, qp.len(), n)
}

/// Training negatives, re-sampled per epoch from (seed, epoch): `k` per training row, drawn
/// with replacement from the group's pool minus the group's exclusion set.
#[pyclass(module = "xmfast.core", frozen)]
struct TrainNegativeSampler {
    inner: xc::negatives::TrainNegativeSampler,
}

#[pymethods]
impl TrainNegativeSampler {
    #[new]
    #[pyo3(signature = (row_offsets, group_pool, pool_offsets, pool_items, exclude_offsets, exclude_items, k, seed))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        row_offsets: PyReadonlyArray1<'_, u64>,
        group_pool: PyReadonlyArray1<'_, u32>,
        pool_offsets: PyReadonlyArray1<'_, u64>,
        pool_items: PyReadonlyArray1<'_, u32>,
        exclude_offsets: PyReadonlyArray1<'_, u64>,
        exclude_items: PyReadonlyArray1<'_, u32>,
        k: usize,
        seed: u64,
    ) -> PyResult<Self> {
        let ro = slice("row_offsets", &row_offsets)?;
        let gp = slice("group_pool", &group_pool)?;
        let pools = csr("pool", slice("pool_offsets", &pool_offsets)?, slice("pool_items", &pool_items)?)?;
        let excl = csr("exclude", slice("exclude_offsets", &exclude_offsets)?, slice("exclude_items", &exclude_items)?)?;
        let inner = py
            .detach(|| xc::negatives::TrainNegativeSampler::new(ro, gp, pools, excl, k, seed))
            .map_err(py_err)?;
        Ok(TrainNegativeSampler { inner })
    }

    #[getter]
    fn rows(&self) -> usize {
        self.inner.rows()
    }

    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }

    /// The negatives of `epoch` as a new `rows × k` uint32 array.
    fn sample<'py>(&self, py: Python<'py>, epoch: u64) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let inner = &self.inner;
        let v = py.detach(|| inner.sample(epoch));
        matrix_to_py(py, v, inner.rows(), inner.k())
    }

    /// Writes the negatives of `epoch` into `out` (a C-contiguous `rows × k` uint32 array), so
    /// a training loop can reuse one buffer.
    fn sample_into(&self, py: Python<'_>, mut out: PyReadwriteArray2<'_, u32>, epoch: u64) -> PyResult<()> {
        let shape = out.shape().to_vec();
        if shape != [self.inner.rows(), self.inner.k()] || !out.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "`out` must be a C-contiguous uint32 array of shape ({}, {}), got shape {:?}",
                self.inner.rows(),
                self.inner.k(),
                shape
            )));
        }
        let buf = out
            .as_slice_mut()
            .map_err(|_| PyValueError::new_err("`out` must be a C-contiguous uint32 array"))?;
        let inner = &self.inner;
        py.detach(|| inner.sample_into(epoch, buf)).map_err(py_err)
    }
}

/// An epoch's pointwise training instances in `order` (see `xmfast_core::negatives::gather_instances`),
/// written into `out_keys`, `out_items` (int64) and `out_labels` (float32), each as long as `order`.
#[pyfunction]
#[pyo3(signature = (order, keys, items, negatives, rows, out_keys, out_items, out_labels))]
#[allow(clippy::too_many_arguments)]
fn gather_instances(
    py: Python<'_>,
    order: PyReadonlyArray1<'_, i64>,
    keys: PyReadonlyArray1<'_, i64>,
    items: PyReadonlyArray1<'_, i64>,
    negatives: PyReadonlyArray2<'_, u32>,
    rows: PyReadonlyArray1<'_, i64>,
    mut out_keys: PyReadwriteArray1<'_, i64>,
    mut out_items: PyReadwriteArray1<'_, i64>,
    mut out_labels: PyReadwriteArray1<'_, f32>,
) -> PyResult<()> {
    let k = negatives.shape()[1];
    let negatives = negatives.as_slice().map_err(|_| PyValueError::new_err("`negatives` must be C-contiguous"))?;
    let (order, keys, items, rows) =
        (slice("order", &order)?, slice("keys", &keys)?, slice("items", &items)?, slice("rows", &rows)?);
    let contiguous = |name: &str| PyValueError::new_err(format!("`{name}` must be a C-contiguous 1-d array"));
    let ok = out_keys.as_slice_mut().map_err(|_| contiguous("out_keys"))?;
    let oi = out_items.as_slice_mut().map_err(|_| contiguous("out_items"))?;
    let ol = out_labels.as_slice_mut().map_err(|_| contiguous("out_labels"))?;
    py.detach(|| xc::negatives::gather_instances(order, keys, items, negatives, k, rows, ok, oi, ol)).map_err(py_err)
}

/// Item co-occurrence over the histories of groups in `markets`: returns the symmetric CSR
/// (indptr uint64, indices uint32, counts uint32) of `n_items × n_items`, zero diagonal.
#[pyfunction]
#[pyo3(signature = (history_offsets, history_items, group_market, markets, n_items, max_history=None))]
fn cooccurrence<'py>(
    py: Python<'py>,
    history_offsets: PyReadonlyArray1<'py, u64>,
    history_items: PyReadonlyArray1<'py, u32>,
    group_market: PyReadonlyArray1<'py, u16>,
    markets: Vec<u16>,
    n_items: usize,
    max_history: Option<usize>,
) -> PyResult<Arrays3<'py, PyArray1<u64>, PyArray1<u32>, PyArray1<u32>>> {
    let h = csr("history", slice("history_offsets", &history_offsets)?, slice("history_items", &history_items)?)?;
    let gm = slice("group_market", &group_market)?;
    let c = py
        .detach(|| xc::cooc::cooccurrence(h, gm, &markets, n_items, max_history))
        .map_err(py_err)?;
    Ok((vec_to_py(py, c.indptr), vec_to_py(py, c.indices), vec_to_py(py, c.counts)))
}

/// The co-occurrence baseline's scores (see `xmfast_core::cooc::history_scores`): for each
/// of `groups`, its history's summed co-occurrence counts at `items`, a (groups, width)
/// array of candidates per group or one 1-d list for every group; returns (groups, width)
/// float64. The matrix is checked and scored with the GIL released.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cooc_scores<'py>(
    py: Python<'py>,
    cooc_indptr: PyReadonlyArray1<'py, u64>,
    cooc_indices: PyReadonlyArray1<'py, u32>,
    cooc_counts: PyReadonlyArray1<'py, u32>,
    history_offsets: PyReadonlyArray1<'py, u64>,
    history_items: PyReadonlyArray1<'py, u32>,
    groups: PyReadonlyArray1<'py, u32>,
    items: PyReadonlyArrayDyn<'py, u32>,
) -> PyResult<Bound<'py, PyArray2<f64>>> {
    let (indptr, indices, counts) = (
        slice("cooc_indptr", &cooc_indptr)?,
        slice("cooc_indices", &cooc_indices)?,
        slice("cooc_counts", &cooc_counts)?,
    );
    let h = csr("history", slice("history_offsets", &history_offsets)?, slice("history_items", &history_items)?)?;
    let g = slice("groups", &groups)?;
    let (shared, width) = match items.shape() {
        [w] => (true, *w),
        [rows, w] if *rows == g.len() => (false, *w),
        shape => {
            return Err(PyValueError::new_err(format!(
                "`items` must be 1-d or (groups = {}, width), got shape {shape:?}",
                g.len()
            )))
        }
    };
    let it = items.as_slice().map_err(|_| PyValueError::new_err("`items` must be C-contiguous"))?;
    let out = py
        .detach(|| xc::cooc::history_scores(xc::cooc::CoocRef::new(indptr, indices, counts)?, h, g, it, width, shared))
        .map_err(py_err)?;
    matrix_to_py(py, out, g.len(), width)
}

/// Fixed-width histories of `rows` (padded with `pad`) and the length kept of each; longer
/// histories are cut by `rule` (recent, random keyed by `keys`, or cooc with the counts given);
/// `leave_out[r]` drops that position of row r's history first (u32::MAX: none).
#[pyfunction]
#[pyo3(signature = (history_offsets, history_items, rows, width, pad, rule="recent", seed=0, keys=None,
                    cooc_indptr=None, cooc_indices=None, cooc_counts=None, leave_out=None))]
#[allow(clippy::too_many_arguments)]
fn padded_histories<'py>(
    py: Python<'py>,
    history_offsets: PyReadonlyArray1<'py, u64>,
    history_items: PyReadonlyArray1<'py, u32>,
    rows: PyReadonlyArray1<'py, u32>,
    width: usize,
    pad: u32,
    rule: &str,
    seed: u64,
    keys: Option<PyReadonlyArray1<'py, u64>>,
    cooc_indptr: Option<PyReadonlyArray1<'py, u64>>,
    cooc_indices: Option<PyReadonlyArray1<'py, u32>>,
    cooc_counts: Option<PyReadonlyArray1<'py, u32>>,
    leave_out: Option<PyReadonlyArray1<'py, u32>>,
) -> PyResult<Arrays2<'py, PyArray2<u32>, PyArray1<u32>>> {
    let rule: xc::history::Truncation = rule.parse().map_err(py_err)?;
    let h = csr("history", slice("history_offsets", &history_offsets)?, slice("history_items", &history_items)?)?;
    let rows_s = slice("rows", &rows)?;
    let default_keys: Vec<u64>;
    let keys_s: &[u64] = match &keys {
        Some(k) => slice("keys", k)?,
        None => {
            default_keys = rows_s.iter().map(|&r| r as u64).collect();
            &default_keys
        }
    };
    let cooc = match (&cooc_indptr, &cooc_indices, &cooc_counts) {
        (Some(p), Some(i), Some(c)) => Some(
            xc::cooc::CoocRef::new(slice("cooc_indptr", p)?, slice("cooc_indices", i)?, slice("cooc_counts", c)?)
                .map_err(py_err)?,
        ),
        (None, None, None) => None,
        _ => return Err(PyValueError::new_err("give all of cooc_indptr, cooc_indices and cooc_counts, or none")),
    };
    let leave_out_s = match &leave_out {
        Some(l) => Some(slice("leave_out", l)?),
        None => None,
    };
    let (out, lengths) = py
        .detach(|| xc::history::padded_histories(h, rows_s, width, pad, rule, seed, keys_s, cooc, leave_out_s))
        .map_err(py_err)?;
    Ok((matrix_to_py(py, out, rows_s.len(), width)?, vec_to_py(py, lengths)))
}

/// Multi-head self-attention of padded sequences, forward only (see
/// `xmfast_core::attention::attention`): `qkv` (n, width, 3·d) float32 as an input projection
/// writes it, `real` (n, width) bool; returns (n, width, d), zero at padded positions. `parallel`:
/// on the core's threads (false: on the calling thread only).
#[pyfunction]
#[pyo3(signature = (qkv, real, heads, scale, parallel=true))]
fn attention<'py>(
    py: Python<'py>,
    qkv: PyReadonlyArray3<'py, f32>,
    real: PyReadonlyArray2<'py, bool>,
    heads: usize,
    scale: f32,
    parallel: bool,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    let (n, width, three_d) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    if real.shape() != [n, width] || heads == 0 || three_d % (3 * heads) != 0 {
        return Err(PyValueError::new_err(format!(
            "attention: qkv {:?} and real {:?} must be (n, width, 3·heads·head_dim) and (n, width), heads {heads}",
            qkv.shape(),
            real.shape()
        )));
    }
    let d = three_d / 3;
    let q = qkv.as_slice().map_err(|_| PyValueError::new_err("`qkv` must be C-contiguous"))?;
    let r = real.as_slice().map_err(|_| PyValueError::new_err("`real` must be C-contiguous"))?;
    let mut out = vec![0f32; n * width * d];
    let layout = xc::attention::Layout { width, heads, head_dim: d / heads, scale, parallel };
    py.detach(|| xc::attention::attention(q, r, layout, &mut out)).map_err(py_err)?;
    let a = Array3::from_shape_vec((n, width, d), out).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// The parameter names of one encoder block, as in the state dict of ACMR's `EncoderBlock`.
const BLOCK_PARAMETERS: [&str; 12] = [
    "in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias", "ff1.weight", "ff1.bias",
    "ff2.weight", "ff2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
];

/// Post-norm transformer encoder blocks of padded sequences, forward only (see
/// `xmfast_core::encoder::encoder`): `x` (n, width, d) float32, `real` (n, width) bool, `blocks`
/// one dict per block of float32 arrays named as in `EncoderBlock`'s state dict, `eps` the
/// norms'. Returns (n, width, d), zero at padded positions. `parallel`: on the core's threads.
#[pyfunction]
#[pyo3(signature = (x, real, blocks, heads, eps, parallel=true))]
fn encoder<'py>(
    py: Python<'py>,
    x: PyReadonlyArray3<'py, f32>,
    real: PyReadonlyArray2<'py, bool>,
    blocks: Vec<std::collections::HashMap<String, PyReadonlyArrayDyn<'py, f32>>>,
    heads: usize,
    eps: f32,
    parallel: bool,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    let (n, width, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    if real.shape() != [n, width] || heads == 0 || d % heads != 0 {
        return Err(PyValueError::new_err(format!(
            "encoder: x {:?} and real {:?} must be (n, width, heads·head_dim) and (n, width), heads {heads}",
            x.shape(),
            real.shape()
        )));
    }
    let xs = x.as_slice().map_err(|_| PyValueError::new_err("`x` must be C-contiguous"))?;
    let r = real.as_slice().map_err(|_| PyValueError::new_err("`real` must be C-contiguous"))?;
    let mut parameters = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.iter().enumerate() {
        let mut p: Vec<&[f32]> = Vec::with_capacity(BLOCK_PARAMETERS.len());
        for name in BLOCK_PARAMETERS {
            let a = block.get(name).ok_or_else(|| PyKeyError::new_err(format!("encoder: block {i} has no `{name}`")))?;
            p.push(a.as_slice().map_err(|_| PyValueError::new_err(format!("encoder: block {i}'s `{name}` must be C-contiguous")))?);
        }
        parameters.push(p);
    }
    fn dense<'a>(p: &[&'a [f32]], i: usize) -> xc::encoder::Dense<'a> {
        xc::encoder::Dense { weight: p[i], bias: p[i + 1] }
    }
    let blocks: Vec<xc::encoder::Block<'_>> = parameters
        .iter()
        .map(|p| xc::encoder::Block {
            in_proj: dense(p, 0),
            out_proj: dense(p, 2),
            ff1: dense(p, 4),
            ff2: dense(p, 6),
            norm1: xc::encoder::Norm { weight: p[8], bias: p[9], eps },
            norm2: xc::encoder::Norm { weight: p[10], bias: p[11], eps },
        })
        .collect();
    let mut out = vec![0f32; n * width * d];
    let layout = xc::attention::Layout { width, heads, head_dim: d / heads, scale: ((d / heads) as f32).powf(-0.5), parallel };
    py.detach(|| xc::encoder::encoder(xs, r, &blocks, layout, &mut out)).map_err(py_err)?;
    let a = Array3::from_shape_vec((n, width, d), out).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py))
}

/// Number of (i, j) pairs nonzero in both co-occurrence structures (each pair counted twice).
#[pyfunction]
fn shared_pairs(
    py: Python<'_>,
    a_indptr: PyReadonlyArray1<'_, u64>,
    a_indices: PyReadonlyArray1<'_, u32>,
    b_indptr: PyReadonlyArray1<'_, u64>,
    b_indices: PyReadonlyArray1<'_, u32>,
) -> PyResult<u64> {
    let a = (slice("a_indptr", &a_indptr)?, slice("a_indices", &a_indices)?);
    let b = (slice("b_indptr", &b_indptr)?, slice("b_indices", &b_indices)?);
    py.detach(|| xc::cooc::shared_pairs(a, b)).map_err(py_err)
}

/// Writes synthetic XMarket-format files (one per market) into `out_dir` and returns one dict
/// per file (market, path, users, ratings).
#[pyfunction]
#[pyo3(signature = (out_dir, markets, *, ratings, items, topics=40, min_per_user=5, mean_per_user=9.0, focus=0.8, size_decay=1.0, seed=0, raw_category=None))]
#[allow(clippy::too_many_arguments)]
fn synthesize<'py>(
    py: Python<'py>,
    out_dir: PathBuf,
    markets: Vec<String>,
    ratings: u64,
    items: u32,
    topics: u32,
    min_per_user: u32,
    mean_per_user: f64,
    focus: f64,
    size_decay: f64,
    seed: u64,
    raw_category: Option<String>,
) -> PyResult<Bound<'py, PyList>> {
    let cfg = xc::synth::SynthConfig {
        markets,
        ratings,
        items,
        topics,
        min_per_user,
        mean_per_user,
        focus,
        size_decay,
        seed,
        format: match raw_category {
            Some(category) => xc::synth::SynthFormat::Raw { category },
            None => xc::synth::SynthFormat::Processed,
        },
    };
    let files = py.detach(|| xc::synth::synthesize(&cfg, &out_dir)).map_err(py_err)?;
    let out = PyList::empty(py);
    for f in files {
        let d = PyDict::new(py);
        d.set_item("market", f.market)?;
        d.set_item("path", f.path.display().to_string())?;
        d.set_item("users", f.users)?;
        d.set_item("ratings", f.ratings)?;
        out.append(d)?;
    }
    Ok(out)
}

/// A score array as the model produced it: float32 or float64, any dimensionality.
enum ScoreArray<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> ScoreArray<'py> {
    fn from_any(scores: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = scores.cast::<PyArrayDyn<f32>>() {
            return Ok(ScoreArray::F32(a.readonly()));
        }
        if let Ok(a) = scores.cast::<PyArrayDyn<f64>>() {
            return Ok(ScoreArray::F64(a.readonly()));
        }
        Err(PyTypeError::new_err(
            "`scores` must be a float32 or float64 numpy array (float16/bfloat16 convert exactly with .astype(np.float32))",
        ))
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            ScoreArray::F32(a) => a.shape().to_vec(),
            ScoreArray::F64(a) => a.shape().to_vec(),
        }
    }
}

fn score_slice<'a, T: Element>(a: &'a PyReadonlyArrayDyn<'_, T>) -> PyResult<&'a [T]> {
    if !a.is_c_contiguous() {
        return Err(PyValueError::new_err("`scores` must be C-contiguous (use np.ascontiguousarray)"));
    }
    a.as_slice()
        .map_err(|_| PyValueError::new_err("`scores` must be C-contiguous (use np.ascontiguousarray)"))
}

fn optional_csr<'a>(
    name: &str,
    offsets: &'a Option<PyReadonlyArray1<'_, u64>>,
    values: &'a Option<PyReadonlyArray1<'_, u32>>,
) -> PyResult<Option<Csr<'a>>> {
    match (offsets, values) {
        (None, None) => Ok(None),
        (Some(o), Some(v)) => Ok(Some(csr(
            name,
            slice(&format!("{name}_offsets"), o)?,
            slice(&format!("{name}_items"), v)?,
        )?)),
        _ => Err(PyValueError::new_err(format!("give both `{name}_offsets` and `{name}_items`, or neither"))),
    }
}

/// Where each query's positive stands among its candidates, counted in one pass (no sort).
///
/// `scores` is a 2-d (queries × candidates) float32/float64 array, or 1-d with `offsets`
/// (queries + 1) for ragged candidate lists. `positive` gives the positive's index in each row
/// (default: column 0, as stored candidate lists have it). `exclude_offsets`/`exclude_items`
/// (CSR of column indices) leave columns out per row, for full ranking. `keys` (same shape as
/// `scores`, uint32) or `column_keys` (one per column) order ties for the `trec` policy.
/// Returns a dict of uint32 arrays: `greater`, `ties`, `trec_lost`, `others`.
#[pyfunction]
#[pyo3(signature = (scores, positive=None, *, offsets=None, exclude_offsets=None, exclude_items=None, keys=None, column_keys=None))]
#[allow(clippy::too_many_arguments)]
fn standings<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    positive: Option<PyReadonlyArray1<'py, u32>>,
    offsets: Option<PyReadonlyArray1<'py, u64>>,
    exclude_offsets: Option<PyReadonlyArray1<'py, u64>>,
    exclude_items: Option<PyReadonlyArray1<'py, u32>>,
    keys: Option<PyReadonlyArrayDyn<'py, u32>>,
    column_keys: Option<PyReadonlyArray1<'py, u32>>,
) -> PyResult<Bound<'py, PyDict>> {
    let array = ScoreArray::from_any(scores)?;
    let shape = array.shape();
    let offsets_slice = match &offsets {
        Some(o) => Some(slice("offsets", o)?),
        None => None,
    };
    let layout = match (shape.len(), offsets_slice) {
        (2, None) => xc::metrics::Layout::Dense { cols: shape[1] },
        (1, Some(o)) => xc::metrics::Layout::Ragged { offsets: o },
        (2, Some(_)) => return Err(PyValueError::new_err("`offsets` go with 1-d scores, not a matrix")),
        (1, None) => return Err(PyValueError::new_err("1-d `scores` need `offsets` (one row per query)")),
        (d, _) => return Err(PyValueError::new_err(format!("`scores` must be 1-d or 2-d, not {d}-d"))),
    };
    let rows = match layout {
        xc::metrics::Layout::Dense { .. } => shape[0],
        xc::metrics::Layout::Ragged { offsets } => offsets.len().saturating_sub(1),
    };
    let default_positive;
    let positive = match &positive {
        Some(p) => slice("positive", p)?,
        None => {
            default_positive = vec![0u32; rows];
            &default_positive[..]
        }
    };
    let exclude = optional_csr("exclude", &exclude_offsets, &exclude_items)?;
    let tie_keys = match (&keys, &column_keys) {
        (None, None) => xc::metrics::TieKeys::None,
        (Some(k), None) => {
            if !k.is_c_contiguous() || k.shape() != shape.as_slice() {
                return Err(PyValueError::new_err("`keys` must be C-contiguous with the shape of `scores`"));
            }
            xc::metrics::TieKeys::PerScore(k.as_slice().map_err(|_| PyValueError::new_err("`keys` must be C-contiguous"))?)
        }
        (None, Some(k)) => xc::metrics::TieKeys::PerColumn(slice("column_keys", k)?),
        (Some(_), Some(_)) => return Err(PyValueError::new_err("give `keys` or `column_keys`, not both")),
    };
    let result = match &array {
        ScoreArray::F32(a) => {
            let s = score_slice(a)?;
            py.detach(|| xc::metrics::standings(s, layout, positive, exclude, tie_keys))
        }
        ScoreArray::F64(a) => {
            let s = score_slice(a)?;
            py.detach(|| xc::metrics::standings(s, layout, positive, exclude, tie_keys))
        }
    }
    .map_err(py_err)?;
    let d = PyDict::new(py);
    d.set_item("greater", vec_to_py(py, result.iter().map(|s| s.greater).collect()))?;
    d.set_item("ties", vec_to_py(py, result.iter().map(|s| s.ties).collect()))?;
    d.set_item("trec_lost", vec_to_py(py, result.iter().map(|s| s.trec_lost).collect()))?;
    d.set_item("others", vec_to_py(py, result.iter().map(|s| s.others).collect()))?;
    Ok(d)
}

/// Metric values per query (queries × metrics, float64) from standings, under a tie policy
/// (`pessimistic`, `optimistic`, `expected` or `trec`). Returns (canonical names, values).
#[pyfunction]
#[pyo3(signature = (greater, ties, trec_lost, others, metrics, policy="pessimistic"))]
fn metric_values<'py>(
    py: Python<'py>,
    greater: PyReadonlyArray1<'py, u32>,
    ties: PyReadonlyArray1<'py, u32>,
    trec_lost: PyReadonlyArray1<'py, u32>,
    others: PyReadonlyArray1<'py, u32>,
    metrics: Vec<String>,
    policy: &str,
) -> PyResult<(Vec<String>, Bound<'py, PyArray2<f64>>)> {
    let (g, t, l, o) = (slice("greater", &greater)?, slice("ties", &ties)?, slice("trec_lost", &trec_lost)?, slice("others", &others)?);
    xc::error::check_same_len("standings", &[("greater", g.len()), ("ties", t.len()), ("trec_lost", l.len()), ("others", o.len())])
        .map_err(py_err)?;
    let policy: xc::metrics::TiePolicy = policy.parse().map_err(py_err)?;
    let parsed: Vec<xc::metrics::Metric> =
        metrics.iter().map(|m| m.parse()).collect::<xc::Result<_>>().map_err(py_err)?;
    if let Some(i) = (0..g.len()).find(|&i| l[i] > t[i] || g[i].checked_add(t[i]).is_none_or(|n| n > o[i])) {
        return Err(PyValueError::new_err(format!("standing {i} is inconsistent (greater + ties > others or trec_lost > ties)")));
    }
    let values = py.detach(|| {
        let st: Vec<xc::metrics::Standing> = (0..g.len())
            .map(|i| xc::metrics::Standing { greater: g[i], ties: t[i], trec_lost: l[i], others: o[i] })
            .collect();
        xc::metrics::metric_values(&st, &parsed, policy)
    });
    let names = parsed.iter().map(|m| m.name()).collect();
    Ok((names, matrix_to_py(py, values, g.len(), parsed.len())?))
}

/// Means of the columns of a 2-d float64 matrix, the rows added in order: the bits numpy's
/// `mean(axis=0)` gives for a C-contiguous matrix of two or more columns (one pass, no copy).
#[pyfunction]
fn column_means<'py>(py: Python<'py>, values: PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let cols = values.shape()[1];
    let v = values
        .as_slice()
        .map_err(|_| PyValueError::new_err("`values` must be C-contiguous (use np.ascontiguousarray)"))?;
    let means = py.detach(|| xc::metrics::column_means(v, cols));
    Ok(vec_to_py(py, means))
}

/// The `k` best columns of each row of a 2-d score matrix (score descending, then column
/// ascending), leaving out per-row excluded columns (CSR of column indices). Returns
/// (indices int64, scores) of shape rows × k; rows with fewer eligible columns are padded
/// with -1 and NaN.
#[pyfunction]
#[pyo3(signature = (scores, k, *, exclude_offsets=None, exclude_items=None))]
fn top_k<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    k: usize,
    exclude_offsets: Option<PyReadonlyArray1<'py, u64>>,
    exclude_items: Option<PyReadonlyArray1<'py, u32>>,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyAny>)> {
    let array = ScoreArray::from_any(scores)?;
    let shape = array.shape();
    if shape.len() != 2 {
        return Err(PyValueError::new_err("`scores` must be a 2-d (rows × items) matrix"));
    }
    let cols = shape[1];
    let exclude = optional_csr("exclude", &exclude_offsets, &exclude_items)?;
    match &array {
        ScoreArray::F32(a) => {
            let s = score_slice(a)?;
            let (idx, val) = py.detach(|| xc::metrics::top_k(s, cols, k, exclude)).map_err(py_err)?;
            Ok((matrix_to_py(py, idx, shape[0], k)?, matrix_to_py(py, val, shape[0], k)?.into_any()))
        }
        ScoreArray::F64(a) => {
            let s = score_slice(a)?;
            let (idx, val) = py.detach(|| xc::metrics::top_k(s, cols, k, exclude)).map_err(py_err)?;
            Ok((matrix_to_py(py, idx, shape[0], k)?, matrix_to_py(py, val, shape[0], k)?.into_any()))
        }
    }
}


/// Days since 1970-01-01 of a `YYYY-MM-DD` date (ValueError if invalid).
#[pyfunction]
fn parse_date(text: &str) -> PyResult<i32> {
    xc::parse::parse_date(text.as_bytes()).map_err(PyValueError::new_err)
}

/// `YYYY-MM-DD` of a day number.
#[pyfunction]
fn format_date(day: i32) -> String {
    xc::parse::format_date(day)
}

/// Two-sided p-value of Student's t statistic `t` with `df` degrees of freedom.
#[pyfunction]
fn t_two_sided_p(t: f64, df: f64) -> PyResult<f64> {
    xc::stats::t_two_sided_p(t, df).map_err(py_err)
}

/// Stable 64-bit hash of a string (the one used to key random streams).
#[pyfunction]
fn stable_hash(text: &str) -> u64 {
    xc::rng::stable_hash(text.as_bytes())
}

/// Panics inside Rust on purpose, to check that a panic becomes a Python exception.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: String) {
    py.detach(move || panic!("{message}"))
}

/// Number of threads the Rust core uses (set RAYON_NUM_THREADS before import to change it).
#[pyfunction]
fn num_threads() -> usize {
    xc::threads()
}

#[pymodule]
fn core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("XMARKET_MARKETS", xc::parse::XMARKET_MARKETS.to_vec())?;
    m.add("DataFormatError", m.py().get_type::<DataFormatError>())?;
    m.add_class::<Vocab>()?;
    m.add_class::<TrainNegativeSampler>()?;
    m.add_function(wrap_pyfunction!(read_ratings, m)?)?;
    m.add_function(wrap_pyfunction!(read_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(check_market_name, m)?)?;
    m.add_function(wrap_pyfunction!(map_columns, m)?)?;
    m.add_function(wrap_pyfunction!(file_digest, m)?)?;
    m.add_function(wrap_pyfunction!(kcore_mask, m)?)?;
    m.add_function(wrap_pyfunction!(restrict_items_mask, m)?)?;
    m.add_function(wrap_pyfunction!(compact_ids, m)?)?;
    m.add_function(wrap_pyfunction!(market_items, m)?)?;
    m.add_function(wrap_pyfunction!(leave_one_out, m)?)?;
    m.add_function(wrap_pyfunction!(eval_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(sample_distinct, m)?)?;
    m.add_function(wrap_pyfunction!(gather_instances, m)?)?;
    m.add_function(wrap_pyfunction!(cooccurrence, m)?)?;
    m.add_function(wrap_pyfunction!(cooc_scores, m)?)?;
    m.add_function(wrap_pyfunction!(shared_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(synthesize, m)?)?;
    m.add_function(wrap_pyfunction!(standings, m)?)?;
    m.add_function(wrap_pyfunction!(metric_values, m)?)?;
    m.add_function(wrap_pyfunction!(column_means, m)?)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(parse_date, m)?)?;
    m.add_function(wrap_pyfunction!(format_date, m)?)?;
    m.add_function(wrap_pyfunction!(padded_histories, m)?)?;
    m.add_function(wrap_pyfunction!(attention, m)?)?;
    m.add_function(wrap_pyfunction!(encoder, m)?)?;
    m.add_function(wrap_pyfunction!(t_two_sided_p, m)?)?;
    m.add_function(wrap_pyfunction!(stable_hash, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    Ok(())
}

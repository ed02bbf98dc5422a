//! What a dataset yields ([`Sample`]: named or positional fields, tensors or plain values),
//! what a loader yields ([`Batch`]: one column per field), and the default collate that turns
//! the one into the other, as `torch.utils.data.default_collate`.

use super::error::DataError;
use std::ops::Index;
use tch::{Device, Kind, Tensor};

/// One field of a [`Sample`]: a tensor, or a plain value collated into a tensor (integers to
/// int64, floats to float64, as PyTorch's `default_collate`) or a list (strings).
#[derive(Debug)]
pub enum Field {
    /// A tensor; a batch stacks them along a new first dimension.
    Tensor(Tensor),
    /// An integer (a class label, an id).
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (a file name, a caption); a batch keeps them as a list.
    Str(String),
}

impl Field {
    fn kind_name(&self) -> String {
        match self {
            Field::Tensor(t) => format!("tensor {:?} {:?}", t.kind(), t.size()),
            Field::Int(_) => "int".into(),
            Field::Float(_) => "float".into(),
            Field::Str(_) => "string".into(),
        }
    }
}

impl From<Tensor> for Field {
    fn from(t: Tensor) -> Self {
        Field::Tensor(t)
    }
}
impl From<i64> for Field {
    fn from(v: i64) -> Self {
        Field::Int(v)
    }
}
impl From<f64> for Field {
    fn from(v: f64) -> Self {
        Field::Float(v)
    }
}
impl From<String> for Field {
    fn from(v: String) -> Self {
        Field::Str(v)
    }
}
impl From<&str> for Field {
    fn from(v: &str) -> Self {
        Field::Str(v.to_owned())
    }
}

/// One sample of a [`super::Dataset`]: fields in order, each optionally named (a Python
/// dataset's tuple or dict item).
///
/// ```
/// use lightning_core::data::Sample;
/// use tch::Tensor;
/// let s = Sample::new().with("image", Tensor::zeros([3, 8, 8], tch::kind::FLOAT_CPU)).with("label", 7i64);
/// assert_eq!(s.len(), 2);
/// assert_eq!(s.names(), vec![Some("image"), Some("label")]);
/// let t = Sample::from_tensors(vec![Tensor::from(1.0f32), Tensor::from(2i64)]);
/// assert_eq!(t.names(), vec![None, None]);
/// ```
#[derive(Debug, Default)]
pub struct Sample {
    fields: Vec<(Option<String>, Field)>,
}

impl Sample {
    /// No fields yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Positional tensor fields (a tuple item).
    pub fn from_tensors(tensors: Vec<Tensor>) -> Self {
        Sample {
            fields: tensors
                .into_iter()
                .map(|t| (None, Field::Tensor(t)))
                .collect(),
        }
    }
    /// Adds a named field.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Field>) -> Self {
        self.fields.push((Some(name.into()), value.into()));
        self
    }
    /// Adds a positional field.
    pub fn push(mut self, value: impl Into<Field>) -> Self {
        self.fields.push((None, value.into()));
        self
    }
    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }
    /// Whether the sample has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
    /// The fields' names (`None` for positional ones).
    pub fn names(&self) -> Vec<Option<&str>> {
        self.fields.iter().map(|(n, _)| n.as_deref()).collect()
    }
    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .map(|(_, f)| f)
    }
    /// The fields, in order.
    pub fn fields(&self) -> impl Iterator<Item = (Option<&str>, &Field)> {
        self.fields.iter().map(|(n, f)| (n.as_deref(), f))
    }
    /// Takes the fields.
    pub fn into_fields(self) -> Vec<(Option<String>, Field)> {
        self.fields
    }
}

/// One column of a [`Batch`].
#[derive(Debug)]
pub enum Column {
    /// Stacked tensors (or collated numbers), the batch as the first dimension.
    Tensor(Tensor),
    /// The samples' strings.
    Strings(Vec<String>),
}

/// A batch: one column per field of the dataset's samples, the batch as the first dimension
/// (`batch[0]` inputs, `batch[1]` targets for an `(x, y)` dataset), each optionally named
/// (`batch.named("image")`).
#[derive(Debug)]
pub struct Batch {
    columns: Vec<(Option<String>, Column)>,
}

impl Batch {
    /// A batch of these tensors (positional columns).
    pub fn new(tensors: Vec<Tensor>) -> Self {
        Batch {
            columns: tensors
                .into_iter()
                .map(|t| (None, Column::Tensor(t)))
                .collect(),
        }
    }
    /// A batch of these columns.
    pub fn from_columns(columns: Vec<(Option<String>, Column)>) -> Self {
        Batch { columns }
    }
    /// The number of samples (first dimension of the first column; 0 when empty).
    pub fn size(&self) -> i64 {
        match self.columns.first().map(|(_, c)| c) {
            Some(Column::Tensor(t)) => t.size().first().copied().unwrap_or(0),
            Some(Column::Strings(s)) => s.len() as i64,
            None => 0,
        }
    }
    /// The tensor columns, in order (string columns left out).
    pub fn tensors(&self) -> Vec<&Tensor> {
        self.columns
            .iter()
            .filter_map(|(_, c)| match c {
                Column::Tensor(t) => Some(t),
                Column::Strings(_) => None,
            })
            .collect()
    }
    /// The columns, in order, with their names.
    pub fn columns(&self) -> impl Iterator<Item = (Option<&str>, &Column)> {
        self.columns.iter().map(|(n, c)| (n.as_deref(), c))
    }
    /// The `i`-th column as a tensor, or an error naming how many there are (or that it holds
    /// strings).
    pub fn get(&self, i: usize) -> Result<&Tensor, DataError> {
        match self.columns.get(i) {
            Some((_, Column::Tensor(t))) => Ok(t),
            Some((name, Column::Strings(_))) => Err(DataError::NotATensor {
                column: name.clone().unwrap_or_else(|| i.to_string()),
            }),
            None => Err(DataError::NoTensor {
                index: i,
                len: self.columns.len(),
            }),
        }
    }
    /// The tensor column named `name`.
    pub fn named(&self, name: &str) -> Result<&Tensor, DataError> {
        match self
            .columns
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name))
        {
            Some((_, Column::Tensor(t))) => Ok(t),
            Some((_, Column::Strings(_))) => Err(DataError::NotATensor {
                column: name.to_owned(),
            }),
            None => Err(DataError::NoColumn {
                name: name.to_owned(),
                names: self.columns.iter().filter_map(|(n, _)| n.clone()).collect(),
            }),
        }
    }
    /// The string column named `name`.
    pub fn strings(&self, name: &str) -> Option<&[String]> {
        self.columns.iter().find_map(|(n, c)| match c {
            Column::Strings(s) if n.as_deref() == Some(name) => Some(s.as_slice()),
            _ => None,
        })
    }
    /// Moves every tensor to `device` (no copy when already there). With `non_blocking`, a
    /// copy from pinned host memory to a GPU overlaps what runs next on the device.
    pub fn to_device_with(self, device: Device, non_blocking: bool) -> Self {
        if self.tensors().iter().all(|t| t.device() == device) {
            return self;
        }
        let columns = self
            .columns
            .into_iter()
            .map(|(n, c)| match c {
                Column::Tensor(t) => {
                    let kind = t.kind();
                    (
                        n,
                        Column::Tensor(t.to_device_(device, kind, non_blocking, false)),
                    )
                }
                s => (n, s),
            })
            .collect();
        Batch { columns }
    }
    /// Moves every tensor to `device` (no copy when already there).
    pub fn to_device(self, device: Device) -> Self {
        self.to_device_with(device, false)
    }
    /// Pins every tensor's host memory (for a non-blocking copy to `device`); a no-op unless
    /// `device` is a GPU.
    pub(crate) fn pinned(self, device: Device) -> Self {
        if !device.is_cuda() {
            return self;
        }
        let columns = self
            .columns
            .into_iter()
            .map(|(n, c)| match c {
                Column::Tensor(t) if t.device() == Device::Cpu => {
                    (n, Column::Tensor(t.pin_memory(device)))
                }
                c => (n, c),
            })
            .collect();
        Batch { columns }
    }
}

impl Index<usize> for Batch {
    type Output = Tensor;
    /// Panics when out of range or a string column, as slices do; use [`Batch::get`] for an
    /// error instead.
    fn index(&self, i: usize) -> &Tensor {
        match self.get(i) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Collates samples into a batch as PyTorch's `default_collate`: field by field, tensors
/// stacked along a new first dimension, integers into an int64 tensor, floats into a float64
/// tensor, strings into a list. Every sample must have the same fields (names, order, kinds
/// and shapes); a mismatch is an error naming the field, the samples and what differs.
///
/// ```
/// use lightning_core::data::{default_collate, Sample};
/// use tch::Tensor;
/// let s = |i: i64| Sample::new().with("x", Tensor::from_slice(&[i as f32, 0.0])).with("y", i);
/// let b = default_collate(vec![s(1), s(2), s(3)], &[10, 11, 12])?;
/// assert_eq!(b.named("x")?.size(), vec![3, 2]);
/// assert_eq!(Vec::<i64>::try_from(b.named("y")?)?, vec![1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn default_collate(samples: Vec<Sample>, indices: &[usize]) -> Result<Batch, DataError> {
    let Some(first) = samples.first() else {
        return Ok(Batch::from_columns(Vec::new()));
    };
    let names: Vec<Option<String>> = first.fields.iter().map(|(n, _)| n.clone()).collect();
    let width = names.len();
    let mut columns: Vec<Vec<Field>> = (0..width).map(|_| Vec::new()).collect();
    for (k, s) in samples.into_iter().enumerate() {
        let index = indices.get(k).copied().unwrap_or(k);
        if s.fields.len() != width || s.fields.iter().zip(&names).any(|((n, _), m)| n != m) {
            return Err(DataError::Collate {
                field: "(the sample's fields)".into(),
                detail: format!(
                    "sample {index} has fields {:?}, the batch's first sample {:?}",
                    s.fields.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                    names
                ),
            });
        }
        for (c, (_, f)) in columns.iter_mut().zip(s.fields) {
            c.push(f);
        }
    }
    let label = |i: usize| -> String {
        names[i]
            .clone()
            .unwrap_or_else(|| format!("{i} (positional)"))
    };
    let mut out = Vec::with_capacity(width);
    for (i, col) in columns.into_iter().enumerate() {
        let first = col[0].kind_name();
        let mismatch = |k: usize, f: &Field| DataError::Collate {
            field: label(i),
            detail: format!(
                "sample {} has a {first}, sample {} a {}",
                indices.first().copied().unwrap_or(0),
                indices.get(k).copied().unwrap_or(k),
                f.kind_name()
            ),
        };
        let column =
            match &col[0] {
                Field::Tensor(t0) => {
                    let (shape, kind) = (t0.size(), t0.kind());
                    let ts = same_kind(col, &mismatch, |f| match f {
                        Field::Tensor(t) if t.size() == shape && t.kind() == kind => Ok(t),
                        other => Err(other),
                    })?;
                    Column::Tensor(Tensor::stack(&ts, 0))
                }
                Field::Int(_) => Column::Tensor(Tensor::from_slice(&same_kind(
                    col,
                    &mismatch,
                    |f| match f {
                        Field::Int(x) => Ok(x),
                        other => Err(other),
                    },
                )?)),
                Field::Float(_) => {
                    let v = same_kind(col, &mismatch, |f| match f {
                        Field::Float(x) => Ok(x),
                        other => Err(other),
                    })?;
                    Column::Tensor(Tensor::from_slice(&v).to_kind(Kind::Double))
                }
                Field::Str(_) => {
                    let strings = |k: usize, f: &Field| DataError::Collate {
                        field: label(i),
                        detail: format!(
                            "sample {} has a {}, the first a string",
                            indices.get(k).copied().unwrap_or(k),
                            f.kind_name()
                        ),
                    };
                    Column::Strings(same_kind(col, &strings, |f| match f {
                        Field::Str(x) => Ok(x),
                        other => Err(other),
                    })?)
                }
            };
        out.push((names[i].clone(), column));
    }
    Ok(Batch::from_columns(out))
}

/// Every field of a column taken by `take`, or the error `mismatch` makes of the first one
/// `take` refuses (with its position in the batch).
fn same_kind<T>(
    col: Vec<Field>,
    mismatch: &dyn Fn(usize, &Field) -> DataError,
    take: impl Fn(Field) -> Result<T, Field>,
) -> Result<Vec<T>, DataError> {
    let mut out = Vec::with_capacity(col.len());
    for (k, f) in col.into_iter().enumerate() {
        out.push(take(f).map_err(|f| mismatch(k, &f))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_stacks_by_field_and_names_the_field_on_mismatch() {
        let s = |i: i64, n: i64| {
            Sample::new()
                .with("x", Tensor::zeros([n], (Kind::Float, Device::Cpu)))
                .with("y", i)
                .with("w", 0.5)
                .with("path", format!("{i}.png"))
        };
        let b = default_collate(vec![s(1, 2), s(2, 2)], &[4, 5]).unwrap();
        assert_eq!(b.size(), 2);
        assert_eq!(b.named("x").unwrap().size(), vec![2, 2]);
        assert_eq!(b.named("y").unwrap().kind(), Kind::Int64);
        assert_eq!(b.named("w").unwrap().kind(), Kind::Double);
        assert_eq!(b.strings("path").unwrap(), ["1.png", "2.png"]);
        assert_eq!(b.tensors().len(), 3);
        assert!(b.named("path").is_err());
        assert!(b.named("nope").unwrap_err().to_string().contains("nope"));
        let e = default_collate(vec![s(1, 2), s(2, 3)], &[4, 5]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("`x`") && msg.contains("[2]") && msg.contains("[3]"),
            "{msg}"
        );
        assert!(msg.contains("sample 5"), "{msg}");
        let e = default_collate(vec![s(1, 2), Sample::new().with("x", 1i64)], &[0, 9]);
        assert!(e.unwrap_err().to_string().contains("sample 9"));
    }
}

//! `model.weights.h5` through `hdf5-pure`: the whole file to [`ObjectGroup`]s and datasets, and
//! back.

use hdf5_pure::{AttrValue, DType, File, FileBuilder, Group};

use crate::error::{Error, Result, h5};
use crate::{Array, ArrayData, ObjectGroup};

/// A dataset may hold at most this many times the file's bytes (deflate's best ratio is about
/// 1032:1; a contiguous dataset holds at most the file): a bound on what a corrupt or hostile
/// header can make this crate allocate.
const MAX_EXPANSION: u64 = 1100;

/// The saved objects and the datasets by path.
pub(crate) type Decoded = (Vec<ObjectGroup>, Vec<(String, Array)>);

/// Groups and datasets of an HDF5 file: every group with a `vars` subgroup (a saved Keras object)
/// and every dataset, in the file's name order (indices numerically).
pub(crate) fn decode(bytes: Vec<u8>) -> Result<Decoded> {
    let limit = (bytes.len() as u64).saturating_mul(MAX_EXPANSION);
    let file = File::from_bytes(bytes).map_err(|e| h5("", e))?;
    let mut out = (Vec::new(), Vec::new());
    walk(&file.root(), "", limit, 0, &mut out)?;
    Ok(out)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// Names in order: numbers (`vars/N`) first by value, then the others by name.
fn sort_names(names: &mut [String]) {
    names.sort_by_cached_key(|n| match n.parse::<u64>() {
        Ok(v) => (false, v, n.clone()),
        Err(_) => (true, 0, n.clone()),
    });
}

fn walk(g: &Group, path: &str, limit: u64, depth: usize, out: &mut Decoded) -> Result<()> {
    // Keras nests a few levels; a cycle of hard links would recurse forever.
    if depth > 64 {
        return Err(h5(path, "groups nested more than 64 deep"));
    }
    let mut groups = g.groups().map_err(|e| h5(path, e))?;
    sort_names(&mut groups);
    let mut datasets = g.datasets().map_err(|e| h5(path, e))?;
    sort_names(&mut datasets);
    if groups.iter().any(|c| c == "vars") {
        let vars = g.group("vars").map_err(|e| h5(&join(path, "vars"), e))?;
        let attrs = vars.attrs().map_err(|e| h5(&join(path, "vars"), e))?;
        out.0.push(ObjectGroup {
            path: path.to_string(),
            name: attrs
                .get("name")
                .and_then(AttrValue::as_str)
                .map(str::to_string),
        });
    }
    for d in &datasets {
        let p = join(path, d);
        let ds = g.dataset(d).map_err(|e| h5(&p, e))?;
        let array = read_dataset(&ds, &p, limit)?;
        out.1.push((p, array));
    }
    for c in &groups {
        let p = join(path, c);
        let child = g.group(c).map_err(|e| h5(&p, e))?;
        walk(&child, &p, limit, depth + 1, out)?;
    }
    Ok(())
}

fn read_dataset(ds: &hdf5_pure::Dataset, path: &str, limit: u64) -> Result<Array> {
    let err = |e: hdf5_pure::Error| h5(path, e);
    // Keras marks a bfloat16 variable (stored as raw 16-bit values) with a `dtype` attribute.
    if let Some(dt) = ds.attrs().map_err(err)?.get("dtype") {
        return Err(Error::UnsupportedDtype {
            path: path.to_string(),
            dtype: dt
                .as_str()
                .unwrap_or("(a non-string `dtype` attribute)")
                .to_string(),
        });
    }
    let dims = ds.shape().map_err(err)?;
    let mut shape = Vec::with_capacity(dims.len());
    let mut count: u64 = 1;
    for &d in &dims {
        count = count
            .checked_mul(d)
            .ok_or_else(|| h5(path, "shape overflows"))?;
        shape.push(usize::try_from(d).map_err(|_| h5(path, "shape overflows"))?);
    }
    let dtype = ds.dtype().map_err(err)?;
    let width = match dtype {
        DType::I8 | DType::U8 => 1,
        DType::I16 | DType::U16 => 2,
        DType::F32 | DType::I32 | DType::U32 => 4,
        DType::F64 | DType::I64 | DType::U64 => 8,
        other => {
            return Err(Error::UnsupportedDtype {
                path: path.to_string(),
                dtype: other.to_string(),
            });
        }
    };
    if count.saturating_mul(width) > limit {
        return Err(h5(
            path,
            format!("shape {shape:?} is larger than the file can hold"),
        ));
    }
    let data = match dtype {
        DType::F32 => ArrayData::F32(ds.read_f32().map_err(err)?),
        DType::F64 => ArrayData::F64(ds.read_f64().map_err(err)?),
        DType::I8 => ArrayData::I8(ds.read_i8().map_err(err)?),
        DType::I16 => ArrayData::I16(ds.read_i16().map_err(err)?),
        DType::I32 => ArrayData::I32(ds.read_i32().map_err(err)?),
        DType::I64 => ArrayData::I64(ds.read_i64().map_err(err)?),
        DType::U8 => ArrayData::U8(ds.read_u8().map_err(err)?),
        DType::U16 => ArrayData::U16(ds.read_u16().map_err(err)?),
        DType::U32 => ArrayData::U32(ds.read_u32().map_err(err)?),
        _ => ArrayData::U64(ds.read_u64().map_err(err)?),
    };
    Array::new(shape, data).map_err(|e| match e {
        Error::Shape { shape, len, .. } => Error::Shape {
            path: path.to_string(),
            shape,
            len,
        },
        other => other,
    })
}

/// A group under construction: its attribute, datasets and subgroups in insertion order.
#[derive(Default)]
struct Node<'a> {
    name_attr: Option<&'a str>,
    datasets: Vec<(&'a str, &'a Array)>,
    groups: Vec<(&'a str, Node<'a>)>,
}

impl<'a> Node<'a> {
    fn child(&mut self, name: &'a str) -> &mut Node<'a> {
        let i = match self.groups.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                self.groups.push((name, Node::default()));
                self.groups.len() - 1
            }
        };
        &mut self.groups[i].1
    }

    fn at(&mut self, components: &[&'a str]) -> &mut Node<'a> {
        components.iter().fold(self, |n, c| n.child(c))
    }
}

fn components<'a>(path: &'a str, what: &str) -> Result<Vec<&'a str>> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(Error::BadPath {
            path: path.to_string(),
            reason: format!("a {what} path needs non-empty components without `.`/`..`"),
        });
    }
    Ok(parts)
}

/// An HDF5 file of these objects and datasets, laid out as h5py lays Keras' (the `name`
/// attribute of each object's `vars` group a variable-length UTF-8 string, datasets contiguous
/// little-endian).
pub(crate) fn encode(objects: &[ObjectGroup], weights: &[(String, Array)]) -> Result<Vec<u8>> {
    let mut root = Node::default();
    for o in objects {
        let node = if o.path.is_empty() {
            root.child("vars")
        } else {
            root.at(&components(&o.path, "group")?).child("vars")
        };
        node.name_attr = o.name.as_deref();
    }
    for (path, array) in weights {
        array.check(path)?;
        let parts = components(path, "dataset")?;
        let (name, parents) = parts.split_last().unwrap_or((&"", &[]));
        let node = root.at(parents);
        if node.datasets.iter().any(|(n, _)| n == name) {
            return Err(Error::BadPath {
                path: path.clone(),
                reason: "two datasets at one path".into(),
            });
        }
        node.datasets.push((name, array));
    }
    check_disjoint(&root, "")?;
    let mut b = FileBuilder::new();
    for (name, array) in &root.datasets {
        put(b.create_dataset(name), array);
    }
    for (name, node) in &root.groups {
        let mut g = b.create_group(name);
        fill(&mut g, node);
        b.add_group(g.finish());
    }
    b.finish().map_err(|e| h5("", e))
}

fn check_disjoint(node: &Node<'_>, path: &str) -> Result<()> {
    for (name, child) in &node.groups {
        let p = join(path, name);
        if node.datasets.iter().any(|(d, _)| d == name) {
            return Err(Error::BadPath {
                path: p,
                reason: "both a group and a dataset".into(),
            });
        }
        check_disjoint(child, &p)?;
    }
    Ok(())
}

fn fill(g: &mut hdf5_pure::GroupBuilder, node: &Node<'_>) {
    if let Some(name) = node.name_attr {
        g.set_attr("name", AttrValue::VarLenString(name.to_string()));
    }
    for (name, array) in &node.datasets {
        put(g.create_dataset(name), array);
    }
    for (name, child) in &node.groups {
        let mut c = g.create_group(name);
        fill(&mut c, child);
        g.add_group(c.finish());
    }
}

fn put(d: &mut hdf5_pure::DatasetBuilder, a: &Array) {
    match &a.data {
        ArrayData::F32(v) => d.with_f32_data(v),
        ArrayData::F64(v) => d.with_f64_data(v),
        ArrayData::I8(v) => d.with_i8_data(v),
        ArrayData::I16(v) => d.with_i16_data(v),
        ArrayData::I32(v) => d.with_i32_data(v),
        ArrayData::I64(v) => d.with_i64_data(v),
        ArrayData::U8(v) => d.with_u8_data(v),
        ArrayData::U16(v) => d.with_u16_data(v),
        ArrayData::U32(v) => d.with_u32_data(v),
        ArrayData::U64(v) => d.with_u64_data(v),
    };
    let shape: Vec<u64> = a.shape.iter().map(|&s| s as u64).collect();
    d.with_shape(&shape);
}

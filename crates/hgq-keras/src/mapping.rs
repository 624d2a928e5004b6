//! HDF5 dataset paths <-> Keras variable paths.
//!
//! Keras saves each object (model, layer, sub-layer, optimizer) under a group named by how the
//! object is reached from its parent (`layers/<snake_case(class)>[_N]` for a model's layers, the
//! Python attribute name for a sub-layer: `kq`, `quantizer`), with its own variables as
//! `vars/0`, `vars/1`, ... in the order of `layer._trainable_variables +
//! layer._non_trainable_variables`, the order `model.variables` lists them in too. The `vars`
//! group's `name` attribute is the object's name, and a variable's Keras path is the names of
//! the objects it sits in, outermost first, then its own name (`q_dense/q_dense_kq/
//! fixed_point_quantizer_kbi/b`). The variable's own name is not in the file: the mapping takes
//! the names in model order.
//!
//! hgq2's merge layers (`QAdd`, `QSubtract`, `QMultiply`, `QMaximum`, `QMinimum`,
//! `QAveragePow2`) keep their input quantizers in a `MultipleQuantizers` sub-layer
//! (`self._iq`, group `iq`, auto-named `multiple_quantizers[_N]`) as a tuple of `Quantizer`s,
//! which Keras saves as a container: each element under its snake-cased class name made unique
//! by position (`quantizers/quantizer`, `quantizers/quantizer_1`, ...), not under its own name
//! (`quantizer_8`, ...):
//!
//! ```text
//! layers/q_add/vars/{0,1}                                  name="q_add"        beta, ebops
//! layers/q_add/iq/vars                                     name="multiple_quantizers"
//! layers/q_add/iq/quantizers/quantizer/vars                name="quantizer"    (input 0)
//! layers/q_add/iq/quantizers/quantizer/quantizer/vars/{0,1,2,3}
//!                                 name="fixed_point_quantizer_kif_2"   f, k, i, i_decay_speed
//! layers/q_add/iq/quantizers/quantizer_1/...               name="quantizer_1"  (input 1)
//! ```
//!
//! (`layers/q_add/iq/quantizers` has no `vars`: a container is not a saved object.) The Keras
//! path of input 1's `f` is `q_add/multiple_quantizers/quantizer_1/fixed_point_quantizer_kif_3/f`.
//!
//! `QBatchNormalization` is a layer like `QDense`: `vars/0..5` are `bn_gamma`, `bn_beta`
//! (trainable, when `scale` / `center`), `moving_mean`, `moving_variance`, then hgq2's `beta`,
//! `ebops`; its quantizers are `iq`, `kq`, `bq` (and `oq`), each with its internal `quantizer`.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::{Array, KerasArchive, ObjectGroup, keras_metadata_now};

/// One saved object of an archive: its group, its Keras path and its variables in index order.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedObject<'a> {
    /// The object's HDF5 group (`layers/q_dense/kq/quantizer`; `""` for the model).
    pub group: &'a str,
    /// The Keras path of the object: the `name`s of the saved objects whose groups contain this
    /// one, outermost first, the model's own left out (`q_dense/q_dense_kq/
    /// fixed_point_quantizer_kbi`; `adam` for the optimizer; `""` for the model). A group without
    /// a `name` attribute stands in with its own group name.
    pub keras_path: String,
    /// The datasets `{group}/vars/0`, `{group}/vars/1`, ... (paths and values).
    pub variables: Vec<(&'a str, &'a Array)>,
}

/// Keras' `naming.to_snake_case`: the group name of a model's layer of this class
/// (`QDense` -> `q_dense`, `QMaxPooling2D` -> `q_max_pooling2d`, `InputLayer` -> `input_layer`).
///
/// ```
/// assert_eq!(hgq_keras::snake_case("QConv2D"), "q_conv2d");
/// assert_eq!(hgq_keras::snake_case("QMaxPooling2D"), "q_max_pooling2d");
/// ```
pub fn snake_case(class_name: &str) -> String {
    // re.sub(r"\W+", "", name)
    let s: Vec<char> = class_name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name): left to right, matches do not overlap.
    let mut a = Vec::with_capacity(s.len() + 4);
    let mut i = 0;
    while i < s.len() {
        let hit = s[i] != '\n'
            && s.get(i + 1).is_some_and(char::is_ascii_uppercase)
            && s.get(i + 2).is_some_and(char::is_ascii_lowercase);
        if hit {
            a.extend([s[i], '_', s[i + 1]]);
            i += 2;
            while let Some(&c) = s.get(i).filter(|c| c.is_ascii_lowercase()) {
                a.push(c);
                i += 1;
            }
        } else {
            a.push(s[i]);
            i += 1;
        }
    }
    // re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    let mut b = String::with_capacity(a.len() + 4);
    let mut i = 0;
    while i < a.len() {
        if a[i].is_ascii_lowercase() && a.get(i + 1).is_some_and(char::is_ascii_uppercase) {
            b.push(a[i]);
            b.push('_');
            b.push(a[i + 1]);
            i += 2;
        } else {
            b.push(a[i]);
            i += 1;
        }
    }
    b.to_lowercase()
}

/// Keras variable paths grouped by object (the path less its last component), objects in first
/// appearance order, variables in the given order.
fn by_object<'a>(paths: impl Iterator<Item = &'a str>) -> Result<Vec<(&'a str, Vec<&'a str>)>> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        if p.is_empty() || p.split('/').any(str::is_empty) {
            return Err(Error::Mapping(format!(
                "`{p}` is not a Keras variable path"
            )));
        }
        if !seen.insert(p) {
            return Err(Error::Mapping(format!("variable `{p}` is given twice")));
        }
        let object = p.rsplit_once('/').map_or("", |(o, _)| o);
        match out.iter_mut().find(|(o, _)| *o == object) {
            Some((_, v)) => v.push(p),
            None => out.push((object, vec![p])),
        }
    }
    Ok(out)
}

impl KerasArchive {
    /// The saved objects of the weights file with their Keras paths and variables (see
    /// [`SavedObject`]). An object's datasets must be exactly `vars/0` .. `vars/{n-1}`, as Keras
    /// writes and reads them.
    pub fn saved_objects(&self) -> Result<Vec<SavedObject<'_>>> {
        let mut out = Vec::with_capacity(self.objects.len());
        for o in &self.objects {
            // The names of the objects whose groups contain this one (and its own), model left out.
            let mut names = Vec::new();
            for outer in &self.objects {
                let inside = outer.path == o.path
                    || (!outer.path.is_empty()
                        && o.path
                            .strip_prefix(outer.path.as_str())
                            .is_some_and(|r| r.starts_with('/')));
                if inside && !outer.path.is_empty() {
                    names.push((outer.path.len(), object_name(outer)));
                }
            }
            names.sort();
            let keras_path = names.iter().map(|(_, n)| *n).collect::<Vec<_>>().join("/");
            let prefix = if o.path.is_empty() {
                "vars/".to_string()
            } else {
                format!("{}/vars/", o.path)
            };
            let mut vars: Vec<(usize, &str, &Array)> = Vec::new();
            for (p, a) in &self.weights {
                let Some(rest) = p.strip_prefix(&prefix) else {
                    continue;
                };
                let index = rest
                    .parse::<usize>()
                    .ok()
                    .filter(|i| i.to_string() == rest)
                    .ok_or_else(|| {
                        Error::Mapping(format!(
                            "dataset `{p}` is not a variable index (Keras saves `vars/0`, `vars/1`, ...)"
                        ))
                    })?;
                vars.push((index, p.as_str(), a));
            }
            vars.sort_by_key(|v| v.0);
            if vars.iter().enumerate().any(|(i, v)| v.0 != i) {
                return Err(Error::Mapping(format!(
                    "the datasets of `{prefix}` are not numbered 0..{}",
                    vars.len()
                )));
            }
            out.push(SavedObject {
                group: &o.path,
                keras_path,
                variables: vars.into_iter().map(|(_, p, a)| (p, a)).collect(),
            });
        }
        Ok(out)
    }

    /// The variables of the archive by Keras variable path, for the given paths in model order
    /// (`[v.path for v in model.variables]`, hgq-torch's `keras_variables()` names; the optimizer's
    /// variables may be added, `adam/iteration`, ...): the `i`-th path of an object is its
    /// `vars/i`. Returned in the order given. Objects of the file that none of the paths name
    /// (the optimizer when its variables are not asked for) are left out.
    ///
    /// A path may start with the model's name (a `Sequential` builds its layers in its own name
    /// scope: `sequential/q_dense/kernel`).
    ///
    /// An object is found as Keras' loading finds it, by its place: the group that
    /// [`KerasArchive::from_variables`] would write it to, from `config.json` and the paths
    /// (merge layers' input quantizers by position), when the file has that group. The automatic
    /// names of sub-layers (`fixed_point_quantizer_kbi_6`, `multiple_quantizers_2`,
    /// `quantizer_5`) count on over a Python session, so an archive saved after other models were
    /// made in the same session has other names than a fresh session (or hgq-torch) gives: they
    /// need not match. Objects that the rules do not place (a config they do not lay out, an
    /// optimizer that `compile_config` does not name) are found by name: the saved object whose
    /// Keras path ([`SavedObject::keras_path`]) is the object's.
    ///
    /// Errors when a path's object is not in the file (by place or by name), is there more than
    /// once by name, or holds another number of variables than the paths name.
    pub fn variable_paths<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<(String, &Array)>> {
        let objects = self.saved_objects()?;
        let model = self
            .objects
            .iter()
            .find(|o| o.path.is_empty())
            .and_then(|o| o.name.as_deref());
        // The layout the config gives, if it gives one.
        let layout = crate::python_json(&self.config, crate::CONFIG_MEMBER)
            .ok()
            .and_then(|cfg| ModelLayout::from_config(&cfg).ok());
        let mut placed: Vec<(String, String)> = layout
            .as_ref()
            .map(|m| m.layers.clone())
            .unwrap_or_default();
        let mut scratch = Vec::new();
        let mut found: Vec<(&str, &Array)> = Vec::with_capacity(names.len());
        for (object, vars) in by_object(names.iter().map(AsRef::as_ref))? {
            let by_place = layout
                .as_ref()
                .and_then(|m| place(m, m.own_path(object), &mut placed, &mut scratch).ok())
                .and_then(|g| objects.iter().find(|o| o.group == g));
            let o = match by_place {
                Some(o) => o,
                None => {
                    let exact = objects.iter().any(|o| o.keras_path == object);
                    let object = match model {
                        Some(m) if !exact => strip_model(object, m),
                        _ => object,
                    };
                    let mut hits = objects.iter().filter(|o| o.keras_path == object);
                    let (Some(o), None) = (hits.next(), hits.next()) else {
                        let n = objects.iter().filter(|o| o.keras_path == object).count();
                        return Err(Error::Mapping(if n == 0 {
                            format!(
                                "variable `{}`: no saved object `{object}` in model.weights.h5",
                                vars[0]
                            )
                        } else {
                            format!("variable `{}`: {n} saved objects are `{object}`", vars[0])
                        }));
                    };
                    o
                }
            };
            if o.variables.len() != vars.len() {
                return Err(Error::Mapping(format!(
                    "object `{object}` (group `{}`) holds {} variables, {} are named: {vars:?}",
                    o.group,
                    o.variables.len(),
                    vars.len()
                )));
            }
            found.extend(vars.iter().copied().zip(o.variables.iter().map(|v| v.1)));
        }
        let found: std::collections::HashMap<&str, &Array> = found.into_iter().collect();
        Ok(names
            .iter()
            .filter_map(|n| {
                let n = n.as_ref();
                found.get(n).map(|a| (n.to_string(), *a))
            })
            .collect())
    }

    /// An archive of a model config (`config.json`'s text, as `model.to_json()` or hgq-torch
    /// write it) and the model's variables by Keras path, in model order (see
    /// [`KerasArchive::variable_paths`]), laid out as Keras 3 lays it out, `metadata.json` of now.
    ///
    /// The rules, from the config (a `Functional` or `Sequential` model):
    /// - the model: group `""` (`vars` at the root) with the model's name;
    /// - each of `model.layers` (for a `Sequential`, a leading `InputLayer` is not one): group
    ///   `layers/{snake_case(class_name)}`, `_1`, `_2` ... for the second, third of a class, with
    ///   the layer's name, written even when the layer has no variables;
    /// - an object inside another, `{outer}/{inner}` in a variable path: group `{outer
    ///   group}/{attr}` where `inner` is `{outer}_{attr}` (hgq2's `q_dense_kq` -> `kq`, also `iq`,
    ///   `bq`, `oq`), or `quantizer` for the internal quantizer of an hgq2 `Quantizer`
    ///   (`fixed_point_quantizer_kbi[_N]`, `fixed_point_quantizer_kif[_N]`,
    ///   `float_point_quantizer[_N]`, `dummy_quantizer[_N]`);
    /// - a merge layer's `MultipleQuantizers` (`q_add/multiple_quantizers[_N]`): group
    ///   `{layer group}/iq`; the `Quantizer`s in it (`quantizer[_N]`): `{iq}/quantizers/quantizer`,
    ///   `{iq}/quantizers/quantizer_1`, ... in the order the variables first name them, which must
    ///   be the order of their automatic names, one after the other (`quantizer_8`, `quantizer_9`:
    ///   a quantizer between them without variables, or the variables naming them out of order,
    ///   is an error, not a shift of the later ones);
    /// - variables whose first component is the compiled optimizer's name (`compile_config`):
    ///   group `optimizer`.
    ///
    /// A leading model name is dropped (a `Sequential`'s variables are `sequential/q_dense/kernel`).
    /// An object's `i`-th variable in `vars` is `vars/i`. A variable of any other object (a
    /// nested model, a sub-layer not named as above) is an error naming it.
    pub fn from_variables(config: String, vars: &[(String, Array)]) -> Result<Self> {
        let cfg = crate::python_json(&config, crate::CONFIG_MEMBER)?;
        let model = ModelLayout::from_config(&cfg)?;
        let mut objects = vec![ObjectGroup {
            path: String::new(),
            name: Some(model.name.clone()),
        }];
        for (name, group) in &model.layers {
            objects.push(ObjectGroup {
                path: group.clone(),
                name: Some(name.clone()),
            });
        }
        let mut weights = Vec::with_capacity(vars.len());
        // Keras object path -> group, for every object (layers' sub-objects included) placed.
        let mut placed: Vec<(String, String)> = model.layers.clone();
        let by_name: std::collections::HashMap<&str, &Array> =
            vars.iter().map(|(p, a)| (p.as_str(), a)).collect();
        for (object, names) in by_object(vars.iter().map(|(p, _)| p.as_str()))? {
            let group = place(&model, model.own_path(object), &mut placed, &mut objects)?;
            for (i, name) in names.iter().enumerate() {
                let Some(array) = by_name.get(name) else {
                    return Err(Error::Mapping(format!("variable `{name}` lost")));
                };
                array.check(name)?;
                let path = if group.is_empty() {
                    format!("vars/{i}")
                } else {
                    format!("{group}/vars/{i}")
                };
                weights.push((path, (*array).clone()));
            }
        }
        Ok(KerasArchive {
            config,
            metadata: keras_metadata_now(),
            objects,
            weights,
        })
    }
}

/// The object path less a leading model name: a `Sequential` builds its layers inside its own
/// name scope, so its variables are `sequential/q_dense/kernel` where a `Functional`'s are
/// `q_dense/kernel`.
fn strip_model<'a>(object: &'a str, model: &str) -> &'a str {
    if object == model {
        ""
    } else {
        object
            .strip_prefix(model)
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(object)
    }
}

fn object_name(o: &ObjectGroup) -> &str {
    o.name
        .as_deref()
        .unwrap_or_else(|| o.path.rsplit('/').next().unwrap_or(""))
}

/// What the config says about where objects go.
struct ModelLayout {
    /// The model's name.
    name: String,
    /// Layer name -> group, in `model.layers` order.
    layers: Vec<(String, String)>,
    /// The compiled optimizer's name.
    optimizer: Option<String>,
}

impl ModelLayout {
    /// An object's Keras path less a leading model name (see [`strip_model`]), unless the path
    /// starts with a layer of the same name.
    fn own_path<'a>(&self, object: &'a str) -> &'a str {
        let first = object.split('/').next().unwrap_or("");
        if self.layers.iter().any(|(l, _)| l == first) {
            object
        } else {
            strip_model(object, &self.name)
        }
    }

    fn from_config(cfg: &Value) -> Result<Self> {
        let bad = |what: &str| Error::Config(what.to_string());
        let class = cfg
            .get("class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `class_name` at the top"))?;
        let sequential = match class {
            "Functional" | "Model" => false,
            "Sequential" => true,
            other => {
                return Err(Error::Config(format!(
                    "a `{other}` model: only `Functional` and `Sequential` models are laid out"
                )));
            }
        };
        let inner = cfg
            .get("config")
            .ok_or_else(|| bad("no `config` at the top"))?;
        let name = inner
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no `config.name`"))?
            .to_string();
        let list = inner
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no `config.layers` list"))?;
        let mut used: Vec<(String, usize)> = Vec::new();
        let mut layers = Vec::with_capacity(list.len());
        for (i, l) in list.iter().enumerate() {
            let class = l
                .get("class_name")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Config(format!("layer {i} has no `class_name`")))?;
            if sequential && i == 0 && class == "InputLayer" {
                continue;
            }
            let lname = l
                .get("config")
                .and_then(|c| c.get("name"))
                .or_else(|| l.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| Error::Config(format!("layer {i} has no `config.name`")))?;
            // saving_lib._get_unique_name
            let base = snake_case(class);
            let group = match used.iter_mut().find(|(n, _)| *n == base) {
                Some((_, count)) => {
                    *count += 1;
                    format!("layers/{base}_{count}")
                }
                None => {
                    used.push((base.clone(), 0));
                    format!("layers/{base}")
                }
            };
            if layers.iter().any(|(n, _): &(String, String)| n == lname) {
                return Err(Error::Config(format!("two layers are named `{lname}`")));
            }
            layers.push((lname.to_string(), group));
        }
        let optimizer = cfg
            .pointer("/compile_config/optimizer/config/name")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(ModelLayout {
            name,
            layers,
            optimizer,
        })
    }
}

/// The number of a Keras automatic name of `base`: `base` -> 0, `base_N` -> N (`N` decimal digits).
fn auto_number(name: &str, base: &str) -> Option<u64> {
    let rest = name.strip_prefix(base)?;
    if rest.is_empty() {
        return Some(0);
    }
    let n = rest.strip_prefix('_')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The internal quantizer an hgq2 `Quantizer` holds as `self.quantizer`, by its auto name.
fn is_internal_quantizer(name: &str) -> bool {
    [
        "fixed_point_quantizer_kbi",
        "fixed_point_quantizer_kif",
        "float_point_quantizer",
        "dummy_quantizer",
    ]
    .iter()
    .any(|base| auto_number(name, base).is_some())
}

/// hgq2's `MultipleQuantizers` (a merge layer's input quantizers), by its auto name.
fn is_multiple_quantizers(name: &str) -> bool {
    auto_number(name, MULTIPLE_QUANTIZERS).is_some()
}

/// The auto name of hgq2's `MultipleQuantizers` sub-layer.
const MULTIPLE_QUANTIZERS: &str = "multiple_quantizers";
/// The auto name (and the snake-cased class) of hgq2's `Quantizer` wrapper.
const QUANTIZER: &str = "quantizer";

/// The group of the object at this Keras path (recording it and the objects it sits in).
fn place(
    model: &ModelLayout,
    object: &str,
    placed: &mut Vec<(String, String)>,
    objects: &mut Vec<ObjectGroup>,
) -> Result<String> {
    if let Some((_, g)) = placed.iter().find(|(o, _)| o == object) {
        return Ok(g.clone());
    }
    let Some((outer, inner)) = object.rsplit_once('/') else {
        // A top-level object that is not a layer.
        if object.is_empty() {
            return Ok(String::new());
        }
        if model.optimizer.as_deref() == Some(object) {
            placed.push((object.to_string(), "optimizer".to_string()));
            objects.push(ObjectGroup {
                path: "optimizer".into(),
                name: Some(object.to_string()),
            });
            return Ok("optimizer".into());
        }
        return Err(Error::Mapping(format!(
            "no layer `{object}` in config.json{}",
            if model.optimizer.is_some() {
                ", nor is it the optimizer"
            } else {
                ""
            }
        )));
    };
    let outer_group = place(model, outer, placed, objects)?;
    let outer_name = outer.rsplit('/').next().unwrap_or(outer);
    let outer_is_layer = model.layers.iter().any(|(l, _)| l == outer);
    let attr = if outer_is_layer && is_multiple_quantizers(inner) {
        // A merge layer's `self._iq`, saved under the attribute's name less its underscore.
        "iq".to_string()
    } else if !outer_is_layer && is_multiple_quantizers(outer_name) {
        quantizer_in_container(object, outer, inner, placed)?
    } else {
        match inner
            .strip_prefix(outer_name)
            .and_then(|r| r.strip_prefix('_'))
        {
            Some(attr) if !attr.is_empty() => attr.to_string(),
            _ if is_internal_quantizer(inner) => "quantizer".to_string(),
            _ => {
                return Err(Error::Mapping(format!(
                    "object `{object}`: cannot tell the group of `{inner}` inside `{outer}` \
                     (known: `{outer_name}_<attr>` -> `<attr>`, an hgq2 internal quantizer -> \
                     `quantizer`, a layer's `multiple_quantizers[_N]` -> `iq` and the \
                     `quantizer[_N]`s in it -> `quantizers/quantizer`, `quantizers/quantizer_1`, ...)"
                )));
            }
        }
    };
    let group = if outer_group.is_empty() {
        attr.to_string()
    } else {
        format!("{outer_group}/{attr}")
    };
    if let Some((other, _)) = placed.iter().find(|(_, g)| *g == group) {
        return Err(Error::Mapping(format!(
            "objects `{other}` and `{object}` would both be group `{group}`"
        )));
    }
    placed.push((object.to_string(), group.clone()));
    objects.push(ObjectGroup {
        path: group.clone(),
        name: Some(inner.to_string()),
    });
    Ok(group)
}

/// The group, inside its `MultipleQuantizers`, of the `Quantizer` `inner` (`{outer}/{inner}` is
/// `object`): Keras saves the tuple `quantizers` as a container, each element under its
/// snake-cased class name made unique by position (`quantizers/quantizer`,
/// `quantizers/quantizer_1`, ...), not under its own name. The position is the order in which the
/// variables name the quantizers; their automatic names (`quantizer_8`, `quantizer_9`, one
/// `Quantizer` made after the other) must follow one another, so that a quantizer that no
/// variable names (one without variables) is an error rather than a shift of those after it
/// (unless it is the last).
fn quantizer_in_container(
    object: &str,
    outer: &str,
    inner: &str,
    placed: &[(String, String)],
) -> Result<String> {
    let Some(number) = auto_number(inner, QUANTIZER) else {
        return Err(Error::Mapping(format!(
            "object `{object}`: `{outer}` holds hgq2 `Quantizer`s, named `quantizer[_N]`, not `{inner}`"
        )));
    };
    let siblings: Vec<&str> = placed
        .iter()
        .filter_map(|(o, _)| o.strip_prefix(outer)?.strip_prefix('/'))
        .filter(|rest| !rest.contains('/'))
        .collect();
    if let Some(prev) = siblings.last() {
        let prev_number = auto_number(prev, QUANTIZER);
        if prev_number.and_then(|n| n.checked_add(1)) != Some(number) {
            return Err(Error::Mapping(format!(
                "object `{object}`: the quantizers of `{outer}` are named `{prev}` then `{inner}`: \
                 one made in between has no variables, or they are out of order, so their places \
                 in `quantizers` are not known"
            )));
        }
    }
    Ok(match siblings.len() {
        0 => format!("quantizers/{QUANTIZER}"),
        k => format!("quantizers/{QUANTIZER}_{k}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake() {
        for (c, s) in [
            ("QDense", "q_dense"),
            ("QConv2D", "q_conv2d"),
            ("QMaxPooling2D", "q_max_pooling2d"),
            ("InputLayer", "input_layer"),
            ("Flatten", "flatten"),
            ("QBatchNormalization", "q_batch_normalization"),
            ("HTTPServer", "http_server"),
            ("Conv2DTranspose", "conv2d_transpose"),
            ("QEinsumDenseBatchnorm", "q_einsum_dense_batchnorm"),
            ("A.B-c", "a_bc"),
        ] {
            assert_eq!(snake_case(c), s, "{c}");
        }
    }

    #[test]
    fn internal_quantizers() {
        assert!(is_internal_quantizer("fixed_point_quantizer_kbi"));
        assert!(is_internal_quantizer("fixed_point_quantizer_kif_12"));
        assert!(!is_internal_quantizer("fixed_point_quantizer_kbix"));
        assert!(!is_internal_quantizer("fixed_point_quantizer_kbi_"));
        assert!(!is_internal_quantizer("q_dense_kq"));
    }

    #[test]
    fn auto_numbers() {
        assert_eq!(auto_number("quantizer", QUANTIZER), Some(0));
        assert_eq!(auto_number("quantizer_12", QUANTIZER), Some(12));
        assert_eq!(auto_number("quantizer_", QUANTIZER), None);
        assert_eq!(auto_number("quantizer_1a", QUANTIZER), None);
        assert_eq!(auto_number("quantizers", QUANTIZER), None);
        assert_eq!(
            auto_number("quantizer_99999999999999999999999", QUANTIZER),
            None
        );
        assert!(is_multiple_quantizers("multiple_quantizers"));
        assert!(is_multiple_quantizers("multiple_quantizers_4"));
        assert!(!is_multiple_quantizers("q_add_iq"));
    }
}

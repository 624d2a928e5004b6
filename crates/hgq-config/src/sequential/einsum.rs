//! hgq2's `QEinsumDense` (module `hgq.layers.core.einsum_dense`) and
//! `QEinsumDenseBatchnorm` (module `hgq.layers.einsum_dense_batchnorm`), and the shapes
//! Keras' `EinsumDense` derives from its equation ([`einsum_shapes`],
//! [`einsum_norm_shapes`]).
use super::value_err;
use crate::de::{At, dict};
use crate::error::Result;
use crate::keras::{DTypePolicy, Initializer, Num};
use crate::model_json::{
    Activation, check_size, default_config, glorot_uniform, read_activation, read_beta0,
};
use crate::pyjson::PyValue;
use crate::quantizer::{Place, QuantizerConfig};

/// The module of hgq2's `QEinsumDense`.
pub const QEINSUM_DENSE_MODULE: &str = "hgq.layers.core.einsum_dense";
/// The module of hgq2's `QEinsumDenseBatchnorm`.
pub const QEINSUM_DENSE_BATCHNORM_MODULE: &str = "hgq.layers.einsum_dense_batchnorm";

/// The shapes of an `EinsumDense` layer, as Keras' `_analyze_einsum_string` derives them
/// from its equation, `bias_axes`, input shape and `output_shape`; see [`einsum_shapes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EinsumShapes {
    /// The kernel's shape (`layer.kernel.shape`), one size per letter of the equation's
    /// kernel part, in its order.
    pub kernel: Vec<usize>,
    /// The bias' shape (`layer.bias.shape`), `None` without `bias_axes`: the output axes
    /// from the first bias axis on (sizes of 1 where an axis has no bias), then a 1 per
    /// axis of a trailing `...`, so that it broadcasts against the output.
    pub bias: Option<Vec<usize>>,
    /// The output shape without the batch axis, every size known, as the einsum gives it:
    /// where `output_shape` leaves a size `None` (an axis of the input that is not summed),
    /// the input's.
    pub output: Vec<usize>,
    /// The output shape without the batch axis as Keras 3.15 computes it for the layer
    /// (`compute_output_shape`, the shape of its output tensor in a model): `None` where
    /// `output_shape` has `None`, and, with `...` on the left over two axes or more beside
    /// the batch, those axes in reverse order (Keras inserts each at the same place). Where it
    /// differs from [`Self::output`], layers after it are built by Keras for the wrong shape.
    pub keras_output: Vec<Option<usize>>,
    /// hgq2's `n_parallel` (`_einsum_free0_size`): the product of the input sizes (batch
    /// excluded) of the axes that are not in the kernel and are in the output or under
    /// `...`. A `parallelization_factor` below 0 is written as this.
    pub n_parallel: usize,
}

/// How `...` sits in an einsum equation (Keras' three forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elision {
    /// `ab,bc->ac`.
    None,
    /// `...b,bc->...c`.
    Left,
    /// `ab...,bc->ac...`.
    Right,
}

/// An equation split as Keras splits it.
struct Parsed<'e> {
    input: &'e str,
    kernel: &'e str,
    output: &'e str,
    elision: Elision,
}

const FORMS: &str = "the forms are `[X],[Y]->[Z]`, `...[X],[Y]->...[Z]` and \
                     `[X]...,[Y]->[Z]...` with ASCII letters, as Keras' EinsumDense takes them";

/// Splits `equation` into its input, kernel and output letters, as Keras' three regular
/// expressions do (but matching the whole equation: Keras ignores what follows a match).
fn parse<'e>(equation: &'e str, path: &str) -> Result<Parsed<'e>> {
    let bad = |why: &str| value_err(path, format!("einsum equation `{equation}`: {why}"));
    let Some((lhs, output)) = equation.split_once("->") else {
        return Err(bad(&format!("no `->` ({FORMS})")));
    };
    let Some((input, kernel)) = lhs.split_once(',') else {
        return Err(bad(&format!("no `,` between input and kernel ({FORMS})")));
    };
    let letters = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphabetic());
    let (input, output, elision) = match (
        input.strip_prefix("..."),
        output.strip_prefix("..."),
        input.strip_suffix("..."),
        output.strip_suffix("..."),
    ) {
        (Some(i), Some(o), _, _) => (i, o, Elision::Left),
        (None, None, Some(i), Some(o)) if i.len() >= 2 => (i, o, Elision::Right),
        _ => (input, output, Elision::None),
    };
    if !(letters(input) && letters(kernel) && letters(output)) {
        return Err(bad(FORMS));
    }
    for (part, what) in [(input, "input"), (kernel, "kernel"), (output, "output")] {
        for (k, c) in part.char_indices() {
            if part[k + 1..].contains(c) {
                return Err(bad(&format!(
                    "the letter `{c}` is repeated in the {what} `{part}` (diagonals and \
                     repeated output axes are not described)"
                )));
            }
        }
    }
    Ok(Parsed {
        input,
        kernel,
        output,
        elision,
    })
}

/// Keras' `_analyze_einsum_string` with `bias_axes` and the checks Keras (or the einsum
/// it runs) makes; paths under `at`.
fn analyze(
    equation: &str,
    bias_axes: Option<&str>,
    input_shape: &[usize],
    partial: &[Option<usize>],
    at: &str,
) -> Result<EinsumShapes> {
    let eq_path = format!("{at}.config.equation");
    let p = parse(equation, &eq_path)?;
    let eq_err = |msg: String| value_err(eq_path.clone(), format!("`{equation}`: {msg}"));
    let rank = input_shape.len() + 1;
    let n_in = p.input.len();
    let input_path = format!("{at}.build_config.input_shape");
    let elided = match p.elision {
        Elision::None if n_in != rank => {
            return Err(value_err(
                input_path,
                format!(
                    "the input of `{equation}` has {n_in} axes, not {rank} (the batch \
                     included): use `...` for axes the equation does not name"
                ),
            ));
        }
        _ if n_in > rank => {
            return Err(value_err(
                input_path,
                format!(
                    "the input of `{equation}` has at least {n_in} axes, not {rank} (the \
                     batch included)"
                ),
            ));
        }
        _ => rank - n_in,
    };
    // Whether the batch axis is named by the first input letter (else it is under `...`).
    let batch_letter = match p.elision {
        Elision::Left if elided > 0 => None,
        _ => p.input.chars().next(),
    };
    if let Some(b) = batch_letter {
        if !p.output.starts_with(b) {
            return Err(eq_err(format!(
                "the batch axis `{b}` (the input's first) must be the output's first"
            )));
        }
        if p.kernel.contains(b) {
            return Err(eq_err(format!(
                "the batch axis `{b}` cannot be a kernel axis"
            )));
        }
    }
    let out_rank = p.output.len()
        + match p.elision {
            Elision::None => 0,
            _ => elided,
        };
    if out_rank <= 1 {
        return Err(eq_err(
            "an output of no axis beside the batch is not described".into(),
        ));
    }
    // `output_shape` holds the output's sizes but the batch's and `...`'s.
    let n_partial = p.output.len() - usize::from(batch_letter.is_some());
    let out_path = format!("{at}.config.output_shape");
    if partial.len() != n_partial {
        return Err(value_err(
            out_path,
            format!(
                "{} sizes for the {n_partial} output axes of `{equation}` (the batch axis and \
                 `...` are not given)",
                partial.len()
            ),
        ));
    }
    for (k, s) in partial.iter().enumerate() {
        if let Some(n) = *s {
            check_size(n, &format!("{out_path}[{k}]"))?;
        }
    }

    // Keras' full shapes (with the batch, `None`), and where each letter sits.
    let input_full: Vec<Option<usize>> = std::iter::once(None)
        .chain(input_shape.iter().map(|&n| Some(n)))
        .collect();
    let left = p.elision == Elision::Left;
    let mut out_full: Vec<Option<usize>> = vec![None];
    // Where `output_shape` starts in the full output.
    let partial_start = if left && elided > 0 { elided } else { 1 };
    if left && elided > 0 {
        out_full.extend(input_full[1..elided].iter().copied());
    }
    out_full.extend(partial.iter().copied());
    if p.elision == Elision::Right {
        out_full.extend(input_full[rank - elided..].iter().copied());
    }
    let offset = if left { elided } else { 0 };
    let in_pos = |c: char| p.input.find(c).map(|i| i + offset);
    let out_pos = |c: char| p.output.find(c).map(|i| i + offset);
    let partial_path = |o: usize| format!("{out_path}[{}]", o - partial_start);

    for c in p.input.chars() {
        let i = in_pos(c).expect("an input letter");
        if let Some(o) = out_pos(c)
            && let (Some(want), Some(have)) = (out_full[o], input_full[i])
            && want != have
        {
            return Err(value_err(
                partial_path(o),
                format!(
                    "the output axis `{c}` is the input's, of size {have}, not {want} \
                     (Keras: input shape and output shape do not match at shared dimension)"
                ),
            ));
        }
    }
    for c in p.output.chars() {
        if !p.input.contains(c) && !p.kernel.contains(c) {
            return Err(eq_err(format!(
                "the output axis `{c}` is neither an input nor a kernel axis"
            )));
        }
    }
    let mut kernel = Vec::with_capacity(p.kernel.len());
    for c in p.kernel.chars() {
        let size = if let Some(o) = out_pos(c) {
            out_full[o].ok_or_else(|| {
                value_err(
                    partial_path(o),
                    format!(
                        "None for the output axis `{c}`, a kernel axis: Keras cannot size the \
                         kernel (None is for axes of the input)"
                    ),
                )
            })?
        } else if let Some(i) = in_pos(c) {
            input_full[i].expect("the batch letter is not a kernel letter")
        } else {
            return Err(eq_err(format!(
                "the kernel axis `{c}` is neither an input nor an output axis"
            )));
        };
        kernel.push(size);
    }

    let bias = match bias_axes {
        None => None,
        Some(b) => {
            let bias_path = format!("{at}.config.bias_axes");
            if b.is_empty() {
                return Err(value_err(
                    bias_path,
                    "an empty bias_axes (None for no bias)",
                ));
            }
            for c in b.chars() {
                if !p.output.contains(c) {
                    return Err(value_err(
                        bias_path,
                        format!(
                            "the bias axis `{c}` is not an output axis of `{equation}` \
                             (`{}`)",
                            p.output
                        ),
                    ));
                }
                if Some(c) == batch_letter {
                    return Err(value_err(
                        bias_path,
                        format!("the bias axis `{c}` is the batch axis"),
                    ));
                }
            }
            let first = b
                .chars()
                .filter_map(|c| p.output.find(c))
                .min()
                .expect("a non-empty bias_axes");
            let mut shape = Vec::new();
            for c in p.output[first..].chars() {
                if b.contains(c) {
                    let o = out_pos(c).expect("an output letter");
                    let n = match out_full[o] {
                        Some(n) => n,
                        None => {
                            return Err(value_err(
                                partial_path(o),
                                format!(
                                    "None for the output axis `{c}`, a bias axis: Keras \
                                     cannot size the bias"
                                ),
                            ));
                        }
                    };
                    shape.push(n);
                } else {
                    shape.push(1);
                }
            }
            if !left {
                shape.extend(std::iter::repeat_n(1, elided));
            }
            Some(shape)
        }
    };

    // Keras' static output: `output_shape.insert(1, input_shape[i])` for each elided axis.
    let mut keras_output: Vec<Option<usize>> = out_full[1..].to_vec();
    if left && elided > 1 {
        keras_output[..elided - 1].reverse();
    }

    // The output, every `None` (an input axis) resolved from the input.
    let mut output = Vec::with_capacity(out_full.len() - 1);
    for (o, s) in out_full.iter().enumerate().skip(1) {
        let n = match s {
            Some(n) => *n,
            None => {
                let c = p
                    .output
                    .chars()
                    .find(|&c| out_pos(c) == Some(o))
                    .expect("a None past the batch is an output letter");
                let i = in_pos(c).expect("a None output axis without kernel is an input axis");
                input_full[i].expect("not the batch")
            }
        };
        output.push(n);
    }

    // hgq2's `_einsum_free0_size`.
    let mut axes: Vec<Option<char>> = Vec::with_capacity(rank);
    match p.elision {
        Elision::Left => {
            axes.extend(std::iter::repeat_n(None, elided));
            axes.extend(p.input.chars().map(Some));
        }
        _ => {
            axes.extend(p.input.chars().map(Some));
            axes.extend(std::iter::repeat_n(None, elided));
        }
    }
    let n_parallel = axes
        .iter()
        .zip(&input_full)
        .skip(1)
        .filter(|(a, _)| match a {
            None => true,
            Some(c) => !p.kernel.contains(*c) && p.output.contains(*c),
        })
        .map(|(_, n)| n.expect("not the batch"))
        .try_fold(1usize, |acc, n| acc.checked_mul(n))
        .ok_or_else(|| value_err(input_path.clone(), "too many values"))?;

    Ok(EinsumShapes {
        kernel,
        bias,
        output,
        keras_output,
        n_parallel,
    })
}

/// The kernel, bias and output shapes of Keras' `EinsumDense(equation, output_shape,
/// bias_axes=bias_axes)` (hgq2's `QEinsumDense`) on inputs of `input_shape` (without the
/// batch axis), as Keras' `_analyze_einsum_string` computes them; `output_shape` is
/// Keras' partial output shape (the sizes of the output axes but the batch's and those
/// under `...`; `None` takes the input's size for an axis of the input).
///
/// Errors on what Keras refuses (an equation not of its three forms, an output size that
/// is not the input's on an axis they share, a kernel or output letter found nowhere
/// else, a bias axis that is not an output axis, `None` for the size of a kernel or bias
/// axis) and on what Keras builds but its einsum does not run, or runs to another shape
/// than the one Keras gives the layer's output: an input of another rank than the
/// equation names (without `...`), an `output_shape` of the wrong length, a letter
/// repeated within the input, the kernel or the output, a batch axis that is not the
/// output's first or is a kernel axis, text after the equation. A size of 0 is refused
/// too. [`EinsumShapes::output`] is the shape the einsum gives, [`EinsumShapes::keras_output`]
/// the one Keras gives the layer's output. The errors name the key as it sits in a layer's
/// JSON object
/// (`$.config.equation`, `$.config.output_shape[1]`, `$.config.bias_axes`,
/// `$.build_config.input_shape`).
///
/// ```
/// use hgq_config::sequential::einsum_shapes;
/// // A dense layer on the last axis of (batch, 4, 6).
/// let s = einsum_shapes("abc,cd->abd", Some("d"), &[4, 6], &[Some(4), Some(5)]).unwrap();
/// assert_eq!((s.kernel, s.bias, s.output), (vec![6, 5], Some(vec![5]), vec![4, 5]));
/// assert_eq!(s.n_parallel, 4);
/// // `...` for the leading axes; `None` for an axis of the input.
/// let s = einsum_shapes("...b,bc->...c", None, &[3, 4, 6], &[Some(5)]).unwrap();
/// assert_eq!((s.kernel, s.bias, s.output), (vec![6, 5], None, vec![3, 4, 5]));
/// let s = einsum_shapes("abc,cde->abde", Some("de"), &[4, 6], &[None, Some(5), Some(2)]).unwrap();
/// assert_eq!((s.kernel, s.bias, s.output), (vec![6, 5, 2], Some(vec![5, 2]), vec![4, 5, 2]));
///
/// let e = einsum_shapes("abc,cd->abd", None, &[4, 6], &[Some(3), Some(5)]).unwrap_err();
/// assert_eq!(e.path(), Some("$.config.output_shape[0]"));
/// let e = einsum_shapes("abc,ce->abd", None, &[4, 6], &[Some(4), Some(5)]).unwrap_err();
/// assert_eq!(e.path(), Some("$.config.equation"));
/// ```
pub fn einsum_shapes(
    equation: &str,
    bias_axes: Option<&str>,
    input_shape: &[usize],
    output_shape: &[Option<usize>],
) -> Result<EinsumShapes> {
    analyze(equation, bias_axes, input_shape, output_shape, "$")
}

/// What hgq2's `QEinsumDenseBatchnorm` derives for its normalization
/// (`_compute_fused_einsum_specs`); see [`einsum_norm_shapes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EinsumNormShapes {
    /// The normalized axes, in the kernel's order (hgq2's ordered `normalize_axes`).
    pub normalize_axes: String,
    /// The shape of `bn_gamma`, `moving_mean` and `moving_variance`: the output sizes of the
    /// normalized axes, in the output's order.
    pub norm: Vec<usize>,
    /// The shape the folded offset is reshaped to before it is added to the bias
    /// (`_norm_offset_cast_shape`: the bias shape with `normalize_axes` as bias axes).
    pub offset_cast: Vec<usize>,
    /// The output axes (the batch axis 0 included) the batch statistics reduce over: those
    /// that are not normalized (`_reduction_axes`).
    pub reduction_axes: Vec<usize>,
    /// The einsum that scales the kernel (`fused_kernel_equation`:
    /// `{kernel},{normalize_axes}->{kernel}`).
    pub fused_kernel_equation: String,
}

/// The normalization shapes of hgq2's `QEinsumDenseBatchnorm(equation, output_shape,
/// bias_axes=..., normalize_axes=normalize_axes)` on inputs of `input_shape` (without the
/// batch axis), as its `_compute_fused_einsum_specs` computes them. `normalize_axes` is the
/// effective one (hgq2's `normalize_axes or bias_axes`; a layer read from JSON has its
/// `bias_axes`). Errors as [`einsum_shapes`] (with `normalize_axes` at
/// `$.config.bias_axes`), and on a normalized axis that is not a kernel and output axis
/// (hgq2's `_check_normalize_axes`, at `$.config.normalize_axes`).
///
/// ```
/// use hgq_config::sequential::einsum_norm_shapes;
/// let n = einsum_norm_shapes("abc,cd->abd", "d", &[4, 6], &[Some(4), Some(5)]).unwrap();
/// assert_eq!(n.norm, [5]);
/// assert_eq!(n.offset_cast, [5]);
/// assert_eq!(n.reduction_axes, [0, 1]);
/// assert_eq!(n.fused_kernel_equation, "cd,d->cd");
/// ```
pub fn einsum_norm_shapes(
    equation: &str,
    normalize_axes: &str,
    input_shape: &[usize],
    output_shape: &[Option<usize>],
) -> Result<EinsumNormShapes> {
    if let Some(m) = normalize_axes_problem(equation, normalize_axes, None) {
        return Err(value_err("$.config.normalize_axes", m));
    }
    norm_shapes(equation, normalize_axes, input_shape, output_shape, "$")
}

fn norm_shapes(
    equation: &str,
    normalize_axes: &str,
    input_shape: &[usize],
    partial: &[Option<usize>],
    at: &str,
) -> Result<EinsumNormShapes> {
    let a = analyze(equation, Some(normalize_axes), input_shape, partial, at)?;
    let p = parse(equation, &format!("{at}.config.equation"))?;
    let offset_cast = a.bias.expect("normalize_axes given");
    // The output's axes, with the batch: letters, and `None` under `...`.
    let rank = a.output.len() + 1;
    let mut out_axes: Vec<Option<char>> = Vec::with_capacity(rank);
    match p.elision {
        Elision::None => out_axes.extend(p.output.chars().map(Some)),
        Elision::Left => {
            out_axes.extend(std::iter::repeat_n(None, rank - p.output.len()));
            out_axes.extend(p.output.chars().map(Some));
        }
        Elision::Right => {
            out_axes.extend(p.output.chars().map(Some));
            out_axes.extend(std::iter::repeat_n(None, rank - p.output.len()));
        }
    }
    let ordered: String = p
        .kernel
        .chars()
        .filter(|&c| normalize_axes.contains(c))
        .collect();
    let normalized = |a: &Option<char>| a.is_some_and(|c| ordered.contains(c));
    let reduction_axes = out_axes
        .iter()
        .enumerate()
        .filter(|(_, a)| !normalized(a))
        .map(|(i, _)| i)
        .collect();
    let norm = out_axes
        .iter()
        .enumerate()
        .filter(|(_, a)| normalized(a))
        .map(|(i, _)| a.output[i - 1])
        .collect();
    Ok(EinsumNormShapes {
        fused_kernel_equation: format!("{},{ordered}->{}", p.kernel, p.kernel),
        normalize_axes: ordered,
        norm,
        offset_cast,
        reduction_axes,
    })
}

/// hgq2's `_check_normalize_axes`: every normalized axis a kernel axis, an output axis and
/// (with `bias_axes`) a bias axis; what is wrong, if anything.
fn normalize_axes_problem(
    equation: &str,
    normalize_axes: &str,
    bias_axes: Option<&str>,
) -> Option<String> {
    // hgq2 splits the equation itself: `equation.split(',')[1].split('->')`.
    let Some((kernel, output)) = equation
        .split_once(',')
        .and_then(|(_, r)| r.split_once("->"))
    else {
        return Some(format!("cannot split `{equation}` as hgq2 does"));
    };
    if normalize_axes.is_empty() {
        return Some("no axis to normalize".into());
    }
    normalize_axes.chars().find_map(|c| {
        let missing = if !kernel.contains(c) {
            Some(format!("kernel axes `{kernel}`"))
        } else if !output.contains(c) {
            Some(format!("output axes `{output}`"))
        } else {
            bias_axes
                .filter(|b| !b.contains(c))
                .map(|b| format!("bias axes `{b}`"))
        };
        missing.map(|m| format!("the normalized axis `{c}` is not one of the {m}"))
    })
}

/// `output_shape` as written: a list of sizes and `null`s.
fn partial_value(p: &[Option<usize>]) -> PyValue {
    PyValue::List(
        p.iter()
            .map(|s| s.map_or(PyValue::Null, |n| PyValue::Int(n as i64)))
            .collect(),
    )
}

/// `output_shape` read: positive sizes and `null`s.
fn read_partial(at: &At<'_>) -> Result<Vec<Option<usize>>> {
    at.list()?
        .iter()
        .map(|a| {
            a.nullable(|a| {
                let n = a.int()?;
                usize::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| a.value_err(format!("size {n} is not positive")))
            })
        })
        .collect()
}

/// One `QEinsumDense` layer: `QEinsumDense(equation, output_shape, activation=...,
/// bias_axes=..., iq_conf=..., kq_conf=..., bq_conf=..., parallelization_factor=...,
/// ...)`, Keras' `EinsumDense` with quantized input, kernel and bias.
///
/// hgq2 writes Keras' `EinsumDense` config (`output_shape`, `equation`, `activation`,
/// `bias_axes`, Keras' default initializers, `activity_regularizer`, `quantization_config`)
/// and then its own keys (`enable_ebops`, ..., `iq_conf`, `kq_conf`, `bq_conf`,
/// `parallelization_factor`). `output_shape` is written as a list (`QEinsumDense(..., 5)`
/// writes `[5]`), `None` as `null`.
///
/// ```
/// use hgq_config::model_json::Activation;
/// use hgq_config::sequential::{ChainModelSpec, QEinsumDenseSpec};
/// let m = ChainModelSpec::new([4, 6])
///     .layer(QEinsumDenseSpec::new("abc,cd->abd", [4, 5]).bias_axes("d").activation(Activation::Relu))
///     .layer(QEinsumDenseSpec::new("abc,bcd->ad", [3]));
/// assert_eq!(m.layer_names().unwrap(), ["q_einsum_dense", "q_einsum_dense_1"]);
/// assert_eq!(m.output_shapes().unwrap(), [vec![4, 5], vec![3]]);
/// let json = m.to_json().unwrap();
/// assert!(json.contains(r#""output_shape": [4, 5], "equation": "abc,cd->abd", "activation": "relu", "bias_axes": "d""#));
/// assert!(json.contains(r#""bq_conf": null, "parallelization_factor": 1}"#));
/// assert_eq!(ChainModelSpec::from_json(&json).unwrap(), m);
///
/// let bad = ChainModelSpec::new([4, 6]).layer(QEinsumDenseSpec::new("abc,cd->abd", [4, 5]).bias_axes("e"));
/// assert_eq!(bad.to_json().unwrap_err().path(), Some("$.config.layers[1].config.bias_axes"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QEinsumDenseSpec {
    /// The layer name; `None` takes Keras' automatic name (`q_einsum_dense`,
    /// `q_einsum_dense_1`, ...).
    pub name: Option<String>,
    /// The einsum equation, input first, kernel second (`abc,cd->abd`), of one of Keras'
    /// forms (see [`einsum_shapes`]).
    pub equation: String,
    /// Keras' partial output shape: the output's sizes but the batch's and those under
    /// `...`; `None` (written `null`) leaves the size of an axis of the input unknown to
    /// Keras. In a model, only a layer whose output no other layer takes may have a `None`
    /// (Keras' output shape then has `None` there, which hgq2's quantizers cannot build on
    /// and which is not described here), and then not with an output quantizer; the same
    /// holds for a leading `...` over two axes or more of different sizes beside the batch,
    /// which Keras reverses in its output shape (see [`EinsumShapes::keras_output`]; the
    /// error is at `equation`).
    pub output_shape: Vec<Option<usize>>,
    /// The output axes with a bias (`bias_axes`, letters of the equation's output);
    /// `None`: no bias.
    pub bias_axes: Option<String>,
    /// The activation; `None` is the identity (`"linear"`).
    pub activation: Option<Activation>,
    /// Whether the layer is trainable.
    pub trainable: bool,
    /// The initial EBOPs regularization factor (`beta0`, written `Constant(float(beta0))`).
    pub beta0: f64,
    /// Whether EBOPs are computed (`enable_ebops`); it needs the input quantizer.
    pub enable_ebops: bool,
    /// The EBOPs scale (`ebops_factor`).
    pub ebops_factor: f64,
    /// The input quantizer (`iq_conf`); `None` is `enable_iq=False`.
    pub iq: Option<QuantizerConfig>,
    /// The kernel quantizer (`kq_conf`).
    pub kq: QuantizerConfig,
    /// The bias quantizer (`bq_conf`); written only with [`Self::bias_axes`] (else `null`).
    pub bq: QuantizerConfig,
    /// The output quantizer (`oq_conf`); `Some` is `enable_oq=True`.
    pub oq: Option<QuantizerConfig>,
    /// `parallelization_factor`. A negative value (the default, `-1`) is written resolved,
    /// as a built layer writes it: [`EinsumShapes::n_parallel`]. A document whose value
    /// equals that reads as `-1`.
    pub parallelization_factor: i64,
}

impl QEinsumDenseSpec {
    /// `QEinsumDense(equation, output_shape)` with every other argument at the reference's
    /// default: unnamed, no activation, no bias, `beta0=1e-5`, EBOPs on, the `'default'`
    /// quantizer configurations for datalane (iq), weight (kq) and bias (bq), no output
    /// quantizer, `parallelization_factor=-1` (resolved when written).
    pub fn new(
        equation: impl Into<String>,
        output_shape: impl IntoIterator<Item = impl Into<Option<usize>>>,
    ) -> Self {
        QEinsumDenseSpec {
            name: None,
            equation: equation.into(),
            output_shape: output_shape.into_iter().map(Into::into).collect(),
            bias_axes: None,
            activation: None,
            trainable: true,
            beta0: 1e-5,
            enable_ebops: true,
            ebops_factor: 1.0,
            iq: Some(default_config(Place::Datalane)),
            kq: default_config(Place::Weight),
            bq: default_config(Place::Bias),
            oq: None,
            parallelization_factor: -1,
        }
    }

    spec_setters!(
        name,
        activation,
        trainable,
        beta0,
        enable_ebops,
        ebops_factor,
        iq,
        kq,
        bq,
        oq
    );

    /// Sets `bias_axes` (`None`: no bias).
    pub fn bias_axes<S: Into<String>>(mut self, b: impl Into<Option<S>>) -> Self {
        self.bias_axes = b.into().map(Into::into);
        self
    }

    /// Sets `parallelization_factor` (negative: the reference's automatic value).
    pub fn parallelization_factor(mut self, p: i64) -> Self {
        self.parallelization_factor = p;
        self
    }

    /// The kernel, bias and output shapes on inputs of `input_shape` (without batch):
    /// [`einsum_shapes`] of this layer.
    pub fn shapes(&self, input_shape: &[usize]) -> Result<EinsumShapes> {
        einsum_shapes(
            &self.equation,
            self.bias_axes.as_deref(),
            input_shape,
            &self.output_shape,
        )
    }

    /// [`Self::shapes`] with errors under `at` (`$.config.layers[j]`), and an output
    /// quantizer on an output Keras does not know the size of refused.
    pub(crate) fn shapes_at(&self, input: &[usize], at: &str) -> Result<EinsumShapes> {
        let shapes = analyze(
            &self.equation,
            self.bias_axes.as_deref(),
            input,
            &self.output_shape,
            at,
        )?;
        if self.oq.is_some()
            && let Some((path, msg)) = self.keras_shape_problem(&shapes, at)
        {
            return Err(value_err(
                path,
                format!("{msg}: hgq2 builds the output quantizer for that shape"),
            ));
        }
        Ok(shapes)
    }

    /// Where Keras' output shape of the layer is not the einsum's (see
    /// [`EinsumShapes::keras_output`]): the path under `at` and why.
    pub(crate) fn keras_shape_problem(
        &self,
        shapes: &EinsumShapes,
        at: &str,
    ) -> Option<(String, String)> {
        if let Some(k) = self.output_shape.iter().position(Option::is_none) {
            return Some((
                format!("{at}.config.output_shape[{k}]"),
                "None: Keras does not know this output size".into(),
            ));
        }
        let keras: Vec<usize> = shapes.keras_output.iter().flatten().copied().collect();
        (keras != shapes.output).then(|| {
            (
                format!("{at}.config.equation"),
                format!(
                    "Keras 3.15 gives `{}` the output shape {keras:?} (the axes under `...` \
                     reversed), not the einsum's {:?}",
                    self.equation, shapes.output
                ),
            )
        })
    }

    /// The `parallelization_factor` written for inputs of `input`.
    pub(crate) fn resolved_parallelization(&self, input: &[usize]) -> i64 {
        if self.parallelization_factor < 0 {
            self.shapes(input).map_or(self.parallelization_factor, |s| {
                i64::try_from(s.n_parallel).unwrap_or(i64::MAX)
            })
        } else {
            self.parallelization_factor
        }
    }

    /// The layer's `config`, for inputs of `input` (without batch).
    pub(crate) fn config_value(&self, name: &str, input: &[usize]) -> PyValue {
        einsum_config(self, name, input)
    }

    /// Reads a `QEinsumDense` `config`; the name and `parallelization_factor` are kept as
    /// written.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let mut c = at.dict()?;
        let conf = |a: At<'_>| a.nullable(QuantizerConfig::read);
        let bias_axes = c
            .req("bias_axes")?
            .nullable(|a| a.str().map(str::to_string))?;
        let bq = conf(c.req("bq_conf")?)?;
        Ok(QEinsumDenseSpec {
            name: Some(c.req("name")?.str()?.to_string()),
            equation: c.req("equation")?.str()?.to_string(),
            output_shape: read_partial(&c.req("output_shape")?)?,
            bias_axes,
            activation: read_activation(&c.req("activation")?)?,
            trainable: c.req("trainable")?.bool()?,
            beta0: read_beta0(&c.req("beta0")?)?,
            enable_ebops: c.req("enable_ebops")?.bool()?,
            ebops_factor: c.req("ebops_factor")?.float()?,
            iq: conf(c.req("iq_conf")?)?,
            kq: QuantizerConfig::read(&c.req("kq_conf")?)?,
            bq: bq.unwrap_or_else(|| default_config(Place::Bias)),
            oq: conf(c.req("oq_conf")?)?,
            parallelization_factor: c.req("parallelization_factor")?.int()?,
        })
    }
}

/// The `config` hgq2 writes for a `QEinsumDense` (and a `QEinsumDenseBatchnorm`, which
/// adds nothing to it).
fn einsum_config(l: &QEinsumDenseSpec, name: &str, input: &[usize]) -> PyValue {
    let conf = |c: Option<&QuantizerConfig>| c.map_or(PyValue::Null, QuantizerConfig::to_value);
    dict([
        ("name", PyValue::str(name)),
        ("trainable", PyValue::Bool(l.trainable)),
        ("dtype", DTypePolicy::default().to_value()),
        ("output_shape", partial_value(&l.output_shape)),
        ("equation", PyValue::str(&l.equation)),
        (
            "activation",
            PyValue::str(l.activation.map_or("linear", Activation::as_str)),
        ),
        (
            "bias_axes",
            l.bias_axes.as_deref().map_or(PyValue::Null, PyValue::str),
        ),
        ("kernel_initializer", glorot_uniform()),
        ("bias_initializer", Initializer::Zeros.to_value()),
        ("kernel_regularizer", PyValue::Null),
        ("bias_regularizer", PyValue::Null),
        ("activity_regularizer", PyValue::Null),
        ("kernel_constraint", PyValue::Null),
        ("bias_constraint", PyValue::Null),
        ("quantization_config", PyValue::Null),
        ("enable_ebops", PyValue::Bool(l.enable_ebops)),
        ("ebops_factor", PyValue::Float(l.ebops_factor)),
        (
            "beta0",
            Initializer::Constant(Num::Float(l.beta0)).to_value(),
        ),
        ("enable_oq", PyValue::Bool(l.oq.is_some())),
        ("enable_iq", PyValue::Bool(l.iq.is_some())),
        ("oq_conf", conf(l.oq.as_ref())),
        ("iq_conf", conf(l.iq.as_ref())),
        ("kq_conf", l.kq.to_value()),
        ("bq_conf", conf(l.bias_axes.is_some().then_some(&l.bq))),
        (
            "parallelization_factor",
            PyValue::Int(l.resolved_parallelization(input)),
        ),
    ])
}

/// One `QEinsumDenseBatchnorm` layer: a [`QEinsumDenseSpec`] whose output is batch-normalized
/// over [`Self::normalize_axes`], the normalization folded into the kernel and the bias
/// before they are quantized: `QEinsumDenseBatchnorm(equation, output_shape, bias_axes=...,
/// normalize_axes=None, momentum=0.99, epsilon=1e-3, center=True, scale=True, ...)`.
///
/// **hgq2 0.2.0 does not write the normalization's arguments**: its config is exactly
/// `QEinsumDense`'s (same keys, same order), without `normalize_axes`, `momentum`,
/// `epsilon`, `center`, `scale` or the normalization's initializers. A layer loaded from
/// JSON has the defaults: `normalize_axes` = `bias_axes`, `momentum=0.99`,
/// `epsilon=1e-3`, `center=True`, `scale=True`. Here the fields are kept (for a layer
/// made in Rust) and not written, and a document reads with their defaults
/// ([`Self::normalize_axes`] `None`). (hgq2 also folds the normalization with Keras'
/// global `epsilon()`, 1e-7, not with its `epsilon`.)
///
/// The layer needs `bias_axes` (its build asserts a bias); every normalized axis must be
/// a kernel, output and bias axis (hgq2's `_check_normalize_axes`), and since the layer
/// is loaded with `normalize_axes = bias_axes`, every bias axis must be a kernel axis.
///
/// ```
/// use hgq_config::sequential::{ChainModelSpec, QEinsumDenseBatchnormSpec};
/// let bn = QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "d").momentum(0.9);
/// let m = ChainModelSpec::new([4, 6]).layer(bn.clone());
/// let json = m.to_json().unwrap();
/// assert!(!json.contains("momentum"));
/// let read = ChainModelSpec::from_json(&json).unwrap();
/// assert_eq!(read, ChainModelSpec::new([4, 6]).layer(bn.momentum(0.99)));
///
/// let norm = QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "d").norm_shapes(&[4, 6]).unwrap();
/// assert_eq!(norm.norm, [5]);
///
/// let bad = QEinsumDenseBatchnormSpec::new("abc,cd->abd", [4, 5], "bd");
/// let e = ChainModelSpec::new([4, 6]).layer(bad).to_json().unwrap_err();
/// assert_eq!(e.path(), Some("$.config.layers[1].config.bias_axes"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QEinsumDenseBatchnormSpec {
    /// The einsum layer (its `bias_axes` required); its name's automatic prefix here is
    /// `q_einsum_dense_batchnorm`.
    pub dense: QEinsumDenseSpec,
    /// The normalized output axes (`normalize_axes`); `None` (or empty): `bias_axes`.
    /// Not written by hgq2.
    pub normalize_axes: Option<String>,
    /// The moving averages' momentum. Not written by hgq2 (read as 0.99).
    pub momentum: f64,
    /// Added to the variance. Not written by hgq2 (read as 1e-3).
    pub epsilon: f64,
    /// Whether the normalization's offset (the bias) is trained (`center`). Not written by
    /// hgq2 (read as true).
    pub center: bool,
    /// Whether the normalization has a scale (`scale`, its `bn_gamma`). Not written by hgq2
    /// (read as true).
    pub scale: bool,
}

impl QEinsumDenseBatchnormSpec {
    /// `QEinsumDenseBatchnorm(equation, output_shape, bias_axes=bias_axes)` with the
    /// reference's defaults ([`QEinsumDenseSpec::new`]'s, `normalize_axes=None`,
    /// `momentum=0.99`, `epsilon=1e-3`, `center=True`, `scale=True`).
    pub fn new(
        equation: impl Into<String>,
        output_shape: impl IntoIterator<Item = impl Into<Option<usize>>>,
        bias_axes: impl Into<String>,
    ) -> Self {
        QEinsumDenseBatchnormSpec {
            dense: QEinsumDenseSpec::new(equation, output_shape).bias_axes(bias_axes.into()),
            normalize_axes: None,
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
        }
    }

    forward_setters! {dense;
        /// Sets the layer name.
        name(impl Into<String>);
        /// Sets the activation (`None`: linear).
        activation(impl Into<Option<Activation>>);
        /// Sets `trainable`.
        trainable(bool);
        /// Sets `beta0`.
        beta0(f64);
        /// Sets `enable_ebops`.
        enable_ebops(bool);
        /// Sets `ebops_factor`.
        ebops_factor(f64);
        /// Sets the input quantizer; `None` turns it off (`enable_iq=False`) and EBOPs with it.
        iq(impl Into<Option<QuantizerConfig>>);
        /// Sets the quantizer of the folded kernel.
        kq(QuantizerConfig);
        /// Sets the quantizer of the folded bias.
        bq(QuantizerConfig);
        /// Sets the output quantizer (`Some`: `enable_oq=True`).
        oq(impl Into<Option<QuantizerConfig>>);
        /// Sets `parallelization_factor` (negative: the reference's automatic value).
        parallelization_factor(i64);
    }

    /// Changes the einsum layer's arguments (`|d| d.activation(Activation::Relu)`).
    pub fn with_dense(mut self, f: impl FnOnce(QEinsumDenseSpec) -> QEinsumDenseSpec) -> Self {
        self.dense = f(self.dense);
        self
    }

    /// Sets `normalize_axes` (`None`: `bias_axes`).
    pub fn normalize_axes<S: Into<String>>(mut self, n: impl Into<Option<S>>) -> Self {
        self.normalize_axes = n.into().map(Into::into);
        self
    }

    /// Sets `momentum`.
    pub fn momentum(mut self, m: f64) -> Self {
        self.momentum = m;
        self
    }

    /// Sets `epsilon`.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = e;
        self
    }

    /// Sets `center`.
    pub fn center(mut self, c: bool) -> Self {
        self.center = c;
        self
    }

    /// Sets `scale`.
    pub fn scale(mut self, s: bool) -> Self {
        self.scale = s;
        self
    }

    /// The normalized axes in effect: [`Self::normalize_axes`] unless `None` or empty, else
    /// `bias_axes`.
    pub fn effective_normalize_axes(&self) -> Option<&str> {
        self.normalize_axes
            .as_deref()
            .filter(|n| !n.is_empty())
            .or(self.dense.bias_axes.as_deref())
    }

    /// The kernel, bias and output shapes on inputs of `input_shape` (without batch).
    pub fn shapes(&self, input_shape: &[usize]) -> Result<EinsumShapes> {
        self.dense.shapes(input_shape)
    }

    /// The normalization's shapes on inputs of `input_shape` (without batch):
    /// [`einsum_norm_shapes`] with [`Self::effective_normalize_axes`]. Errors as
    /// [`Self::check`] does, and as [`einsum_shapes`].
    pub fn norm_shapes(&self, input_shape: &[usize]) -> Result<EinsumNormShapes> {
        self.check("$")?;
        let n = self.effective_normalize_axes().expect("checked");
        norm_shapes(
            &self.dense.equation,
            n,
            input_shape,
            &self.dense.output_shape,
            "$",
        )
    }

    /// hgq2's checks of the normalization, errors under `at` (`$.config.layers[j]`): a
    /// bias (`bias_axes`), `_check_normalize_axes` on `normalize_axes`, and on `bias_axes`
    /// (which the layer is loaded with as `normalize_axes`).
    pub fn check(&self, at: &str) -> Result<()> {
        let bias_path = format!("{at}.config.bias_axes");
        let Some(bias) = self.dense.bias_axes.as_deref() else {
            return Err(value_err(
                bias_path,
                "QEinsumDenseBatchnorm needs bias_axes (its build asserts a bias)",
            ));
        };
        if bias.is_empty() {
            return Err(value_err(
                bias_path,
                "an empty bias_axes (QEinsumDenseBatchnorm needs a bias)",
            ));
        }
        if let Some(n) = self.normalize_axes.as_deref().filter(|n| !n.is_empty())
            && let Some(m) = normalize_axes_problem(&self.dense.equation, n, Some(bias))
        {
            return Err(value_err(format!("{at}.config.normalize_axes"), m));
        }
        match normalize_axes_problem(&self.dense.equation, bias, None) {
            Some(m) => Err(value_err(
                bias_path,
                format!(
                    "{m} (hgq2 does not write normalize_axes: a layer it loads normalizes its \
                     bias_axes)"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The output shape for inputs of `input`; errors under `at`.
    pub(crate) fn output_shape(&self, input: &[usize], at: &str) -> Result<Vec<usize>> {
        let s = self.dense.shapes_at(input, at)?;
        self.check(at)?;
        if let Some(n) = self.effective_normalize_axes() {
            norm_shapes(&self.dense.equation, n, input, &self.dense.output_shape, at)?;
        }
        Ok(s.output)
    }

    /// Reads a `QEinsumDenseBatchnorm` `config` (a `QEinsumDense` one); the normalization
    /// at its defaults.
    pub(crate) fn read(at: &At<'_>) -> Result<Self> {
        let dense = QEinsumDenseSpec::read(at)?;
        Ok(QEinsumDenseBatchnormSpec {
            dense,
            normalize_axes: None,
            momentum: 0.99,
            epsilon: 1e-3,
            center: true,
            scale: true,
        })
    }

    pub(crate) fn config_value(&self, name: &str, input: &[usize]) -> PyValue {
        einsum_config(&self.dense, name, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(eq: &str, bias: Option<&str>, input: &[usize], out: &[Option<usize>]) -> EinsumShapes {
        einsum_shapes(eq, bias, input, out).unwrap_or_else(|e| panic!("{eq}: {e}"))
    }

    #[test]
    fn right_elided_bias_has_trailing_ones() {
        let r = s("ab...,bc->ac...", Some("c"), &[3, 4, 6], &[Some(5)]);
        assert_eq!(r.kernel, [3, 5]);
        assert_eq!(r.bias, Some(vec![5, 1, 1]));
        assert_eq!(r.output, [5, 4, 6]);
        assert_eq!(r.n_parallel, 24);
    }

    #[test]
    fn left_elided_without_elided_axes() {
        let r = s("...ab,bc->...ac", None, &[4], &[Some(5)]);
        assert_eq!((r.kernel, r.output, r.n_parallel), (vec![4, 5], vec![5], 1));
    }
}

//! The `layers` family: layer-level quantizers with state carried across calls.
use crate::backend::{Backend, LayerOut, LayerUnderTest};
use crate::families::Case;
use crate::json::{f32s, shape};
use hgq_config::convert::QuantizerSpec;
use hgq_core::mapper::Axes;
use hgq_core::quantizer::{FixedSpec, FloatSpec, KbiSpec, KifSpec, Props};
use hgq_core::{CallMode, Stochastic};
use serde_json::Value;

fn num(q: &Value, key: &str) -> Result<f64, String> {
    crate::json::float(q.get(key).ok_or_else(|| format!("missing {key:?}"))?)
}

fn axes(q: &Value) -> Result<Axes, String> {
    let list = |key: &str| -> Result<Option<Vec<isize>>, String> {
        match q.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_i64()
                        .map(|v| v as isize)
                        .ok_or_else(|| format!("bad axis {v}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!("bad {key}: {v}")),
        }
    };
    Axes::from_pair(list("heterogeneous_axis")?, list("homogeneous_axis")?)
        .map_err(|e| e.to_string())
}

/// The quantizer a case describes (stochastic rounding off: the reference adds none).
fn make(q: &Value) -> Result<QuantizerSpec, String> {
    let class = q
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or("missing class_name")?;
    let fixed = || -> Result<FixedSpec, String> {
        let rm = crate::json::str_(q, "round_mode")?
            .parse()
            .map_err(|e: hgq_core::CoreError| e.to_string())?;
        let om = crate::json::str_(q, "overflow_mode")?
            .parse()
            .map_err(|e: hgq_core::CoreError| e.to_string())?;
        let mut f = FixedSpec::new(rm, om);
        f.i_decay_speed = num(q, "i_decay_speed")?;
        f.is_weight = crate::json::bool_(q, "is_weight")?;
        f.axes = axes(q)?;
        f.stochastic = Stochastic::Reference;
        Ok(f)
    };
    Ok(match class {
        "FixedPointQuantizerKBI" => {
            let mut s = KbiSpec::new(
                num(q, "k0")?,
                num(q, "b0")?,
                num(q, "i0")?,
                hgq_core::RoundMode::Rnd,
                hgq_core::OverflowMode::Sat,
            );
            s.fixed = fixed()?;
            QuantizerSpec::Kbi(s)
        }
        "FixedPointQuantizerKIF" => {
            let mut s = KifSpec::new(
                num(q, "k0")?,
                num(q, "i0")?,
                num(q, "f0")?,
                hgq_core::RoundMode::Rnd,
                hgq_core::OverflowMode::Sat,
            );
            s.fixed = fixed()?;
            QuantizerSpec::Kif(s)
        }
        "FloatPointQuantizer" => {
            let mut s = FloatSpec::new(num(q, "m0")?, num(q, "e0")?, num(q, "e00")?);
            s.axes = axes(q)?;
            QuantizerSpec::Float(s)
        }
        other => return Err(format!("unknown quantizer class {other:?}")),
    })
}

/// Sets every variable of `state` into the quantizer, checking shape and trainability.
fn load_state(qz: &mut dyn LayerUnderTest, state: &Value, case: &mut Case) -> Result<(), String> {
    let obj = state.as_object().ok_or("state is not an object")?;
    let vars = qz.variables();
    if obj.len() != vars.len() {
        case.fail(format!(
            "{} variables, reference has {}",
            vars.len(),
            obj.len()
        ));
    }
    for (name, v) in obj {
        let value = f32s(v, "value")?;
        let trainable = crate::json::bool_(v, "trainable")?;
        let shp = shape(v, "shape")?;
        let Some(var) = vars.iter().find(|x| &x.name == name) else {
            case.fail(format!("no variable {name:?}"));
            continue;
        };
        if var.shape != shp || var.trainable != trainable {
            case.fail(format!(
                "variable {name}: shape {:?} trainable {}, reference {:?} {}",
                var.shape, var.trainable, shp, trainable
            ));
            if var.shape != shp {
                continue;
            }
        }
        qz.set(name, &value)?;
    }
    Ok(())
}

fn check_state(
    qz: &dyn LayerUnderTest,
    state: &Value,
    case: &mut Case,
    when: &str,
) -> Result<(), String> {
    let obj = state.as_object().ok_or("state is not an object")?;
    for (name, v) in obj {
        let want = f32s(v, "value")?;
        match qz.get(name) {
            Some(got) => {
                // Numbers, not bits: a raw variable's zero sign has no effect, and torch's
                // `maximum` returns +0 or -0 for equal zeros depending on its SIMD path.
                case.compare(
                    &format!("{when} state {name}"),
                    &got,
                    &want,
                    &|a: f32, b: f32| a == b || (a.is_nan() && b.is_nan()),
                    None,
                );
            }
            None => case.fail(format!("{when}: no variable {name:?}")),
        }
    }
    Ok(())
}

/// The properties every `initial_props` and `props_after` must hold (the generator writes null
/// for one it could not compute; none of the sets has one, so null is an error).
const PROPS: [&str; 5] = ["bits", "fbits", "min", "max", "epsilon"];

fn check_props(
    qz: &dyn LayerUnderTest,
    props: &Value,
    case: &mut Case,
    when: &str,
) -> Result<(), String> {
    let p: Props<Vec<f32>> = qz.props()?;
    for (name, got) in PROPS
        .into_iter()
        .zip([&p.bits, &p.fbits, &p.min, &p.max, &p.epsilon])
    {
        if props.get(name).is_none_or(Value::is_null) {
            return Err(format!("{when}: property {name:?} is missing or null"));
        }
        let want = f32s(props, name)?;
        case.values(&format!("{when} {name}"), got, &want);
    }
    Ok(())
}

/// Compares a training call's gradients: `grad` must hold `x` and exactly the variables we
/// train.
fn check_grads(out: &LayerOut, g: &Value, case: &mut Case, when: &str) -> Result<(), String> {
    let g = g.as_object().ok_or("grad is not an object")?;
    if !g.contains_key("x") {
        return Err(format!("{when}: grad has no \"x\""));
    }
    for (name, want) in g {
        let want: Vec<f32> = match want {
            Value::Array(a) => a
                .iter()
                .map(|v| crate::json::float(v).map(|f| f as f32))
                .collect::<Result<_, _>>()?,
            _ => return Err(format!("{when}: grad {name} is not an array")),
        };
        let got = if name == "x" {
            out.dx.as_deref()
        } else {
            out.grads
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        match got {
            Some(got) => case.grads(&format!("{when} grad {name}"), got, &want),
            None => case.fail(format!("{when}: no gradient for {name}")),
        }
    }
    for (name, _) in &out.grads {
        if !g.contains_key(name) {
            case.fail(format!(
                "{when}: gradient for {name} that the reference does not train"
            ));
        }
    }
    Ok(())
}

pub(crate) fn layers(c: &Value, case: &mut Case, backend: &dyn Backend) -> Result<(), String> {
    let q = c.get("quantizer").ok_or("missing quantizer")?;
    let spec = make(q)?;
    let input = shape(c, "input_shape")?;
    let mut qz = backend.layer(&spec, &input)?;
    let qz = qz.as_mut();
    load_state(
        qz,
        c.get("initial_state").ok_or("missing initial_state")?,
        case,
    )?;
    check_props(
        qz,
        c.get("initial_props").ok_or("missing initial_props")?,
        case,
        "initial",
    )?;
    let calls = c
        .get("calls")
        .and_then(Value::as_array)
        .ok_or("missing calls")?;
    for (n, call) in calls.iter().enumerate() {
        let mode = match call.get("training") {
            Some(Value::Bool(true)) => CallMode::Training,
            Some(Value::Bool(false)) => CallMode::Inference,
            Some(Value::String(s)) if s == "tracing" => CallMode::Tracing,
            other => return Err(format!("call {n}: bad training {other:?}")),
        };
        let x = f32s(call, "x")?;
        let dy = f32s(call, "dy")?;
        let when = format!("call {n} ({mode:?})");
        let out = qz.call(&x, &input, mode, &dy)?;
        // The generator writes `grad` for every training call (whose output requires grad: it
        // always does, x does) and for no other call; every training call of both sets has it.
        match (mode == CallMode::Training, call.get("grad")) {
            (true, Some(g)) => check_grads(&out, g, case, &when)?,
            (true, None) => return Err(format!("missing grad in training call {n}")),
            (false, Some(_)) => return Err(format!("grad in call {n}, which does not train")),
            (false, None) => {}
        }
        case.values(&format!("{when} y"), &out.y, &f32s(call, "y")?);
        check_state(
            qz,
            call.get("state_after").ok_or("missing state_after")?,
            case,
            &when,
        )?;
        check_props(
            qz,
            call.get("props_after").ok_or("missing props_after")?,
            case,
            &when,
        )?;
    }
    Ok(())
}

//! The `layers` family: layer-level quantizers with state carried across calls.
use crate::families::Case;
use serde_json::Value;

pub(crate) fn layers(_c: &Value, case: &mut Case) -> Result<(), String> {
    case.fail("layer quantizers are not implemented yet".into());
    Ok(())
}

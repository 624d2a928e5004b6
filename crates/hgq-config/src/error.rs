//! The error type: every problem names the JSON path where it was found.
use thiserror::Error;

/// Everything that can go wrong reading, building or converting a configuration.
///
/// Each variant that concerns a place in a document carries its JSON path, written as
/// `$` for the root, `.key` for a dict entry and `[i]` for a list element, e.g.
/// `$.config.bc.config.min_value`.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// The text is not JSON (as Python's `json` module writes it).
    #[error("invalid JSON at byte {offset}: {msg}")]
    Syntax {
        /// Byte offset of the problem in the input.
        offset: usize,
        /// What was wrong.
        msg: String,
    },
    /// A value has the wrong JSON type.
    #[error("{path}: expected {expected}, found {found}")]
    Type {
        /// Where.
        path: String,
        /// What was expected.
        expected: &'static str,
        /// What was there.
        found: &'static str,
    },
    /// A required key is absent.
    #[error("{path}: missing key `{key}`")]
    MissingKey {
        /// The dict that lacks the key.
        path: String,
        /// The key.
        key: String,
    },
    /// A key that this object (or this quantizer type) does not have.
    #[error("{path}: unexpected key `{key}`")]
    UnknownKey {
        /// The dict that holds the key.
        path: String,
        /// The key.
        key: String,
    },
    /// A `class_name` (or `module`/`registered_name`) this crate does not know.
    #[error("{path}: unknown class `{class_name}`")]
    UnknownClass {
        /// The object.
        path: String,
        /// Its class name (with module where that was the problem).
        class_name: String,
    },
    /// A value of the right type but out of range or not one of the allowed strings.
    #[error("{path}: invalid value: {msg}")]
    Value {
        /// Where.
        path: String,
        /// Why.
        msg: String,
    },
    /// A builder override that the reference refuses.
    #[error("invalid override `{key}`: {msg}")]
    Override {
        /// The keyword argument.
        key: String,
        /// Why it is refused.
        msg: String,
    },
    /// A configuration that cannot become an hgq-core quantizer description.
    #[error("cannot convert: {0}")]
    Convert(String),
}

impl ConfigError {
    /// The JSON path the error names, when it has one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ConfigError::Type { path, .. }
            | ConfigError::MissingKey { path, .. }
            | ConfigError::UnknownKey { path, .. }
            | ConfigError::UnknownClass { path, .. }
            | ConfigError::Value { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// This crate's result type.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong reading, writing or mapping a `.keras` archive. Every bad input is one of
/// these, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the archive file itself failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a readable zip archive (truncated, corrupt, an unsupported compression
    /// method), or a member could not be written.
    #[error("zip archive: {0}")]
    Zip(#[from] zip::result::ZipError),
    /// A member every `.keras` archive has is absent.
    #[error("the archive has no `{0}`{hint}", hint = missing_hint(.0))]
    MissingMember(String),
    /// A member is larger than this crate reads (a decompression bomb, or a model far past what
    /// this crate is for).
    #[error("archive member `{member}` is over the {limit} bytes this crate reads")]
    TooLarge {
        /// The member.
        member: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// `config.json` or `metadata.json` is not UTF-8 JSON.
    #[error("`{member}` is not valid JSON: {source}")]
    Json {
        /// The member (`config.json`, `metadata.json`).
        member: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// `model.weights.h5` is not an HDF5 file this crate can read, or could not be written.
    #[error("model.weights.h5{}: {message}", if .path.is_empty() { String::new() } else { format!(" at `{}`", .path) })]
    Hdf5 {
        /// The object in the HDF5 file, empty for the file as a whole.
        path: String,
        /// What the HDF5 library said.
        message: String,
    },
    /// An HDF5 dataset of a type this crate does not hold (strings, compounds, `float16`,
    /// `bfloat16`, booleans ...).
    #[error(
        "model.weights.h5 dataset `{path}` has dtype {dtype}, which this crate does not read (it reads float32/64 and 8- to 64-bit integers)"
    )]
    UnsupportedDtype {
        /// The dataset.
        path: String,
        /// The dtype as the file has it.
        dtype: String,
    },
    /// An array whose shape does not hold its data (or whose size overflows).
    #[error("`{path}`: shape {shape:?} does not hold {len} values")]
    Shape {
        /// The dataset path or variable.
        path: String,
        /// The shape.
        shape: Vec<usize>,
        /// The number of values.
        len: usize,
    },
    /// An HDF5 path that cannot be written: empty, with an empty component, or both a group and a
    /// dataset.
    #[error("bad HDF5 path `{path}`: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The model config is not one this crate can lay weights out for.
    #[error("config.json: {0}")]
    Config(String),
    /// The h5 layout and the Keras variable paths do not fit together.
    #[error("{0}")]
    Mapping(String),
}

fn missing_hint(member: &str) -> &'static str {
    if member == crate::WEIGHTS_MEMBER {
        " (archives whose weights are `model.weights.npz` or sharded are not read by this crate)"
    } else {
        ""
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn h5(path: &str, e: impl std::fmt::Display) -> Error {
    Error::Hdf5 {
        path: path.to_string(),
        message: e.to_string(),
    }
}

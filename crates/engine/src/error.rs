//! The engine's one error type. Every variant says what went wrong and, where a user can act,
//! what to change.

use std::path::PathBuf;

/// Errors from loading models or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A model file or folder is malformed: bad header, missing tensor, wrong shape or dtype.
    #[error("{}: {message}", path.display())]
    BadModel { path: PathBuf, message: String },

    /// A file format we refuse to load, such as a pickle checkpoint.
    #[error("{}: {message}", path.display())]
    Refused { path: PathBuf, message: String },

    /// A config file that is missing a field or holds a value we cannot use.
    #[error("{}: {message}", path.display())]
    BadConfig { path: PathBuf, message: String },

    /// A request the engine cannot serve as asked: unknown sampler, size not a multiple of 8, ...
    #[error("{0}")]
    InvalidRequest(String),

    /// The caller asked the pipeline to stop between two steps.
    #[error("cancelled after step {step} of {steps}")]
    Cancelled { step: usize, steps: usize },

    /// libtorch reported an error, for example out of memory on the device.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadModel {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn bad_config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadConfig {
            path: path.into(),
            message: message.into(),
        }
    }

    /// True when libtorch ran out of memory on the device; the worker retries with a smaller
    /// batch on this.
    pub fn is_out_of_memory(&self) -> bool {
        // CUDA says "out of memory"; libtorch's CPU allocator says "not enough memory".
        matches!(self, Error::Torch(e) if {
            let message = e.to_string();
            message.contains("out of memory") || message.contains("not enough memory")
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Reading a component's `config.json`.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Parses `path` as JSON into `T`, naming the file and the field on error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &text)
}

pub fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::bad_config(path, format!("{e}")))
}

/// A value that diffusers configs store either once for all blocks or once per block.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    /// The value for each of `blocks` blocks.
    pub fn expand(&self, blocks: usize, what: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::InvalidRequest(format!(
                "config field `{what}` lists {} values for {blocks} blocks",
                v.len()
            ))),
        }
    }
}

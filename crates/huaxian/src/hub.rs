//! Fetching a diffusers model from a Hugging Face Hub repository, for users with internet.
//!
//! `hf:owner/name` or `hf:owner/name@revision` names a repository; the files a render needs
//! (configs, tokenizer, scheduler and the safetensors weights, never pickles) are downloaded
//! once into a local cache and the folder is loaded like any other. `HF_ENDPOINT` overrides
//! the server and `HF_TOKEN` authenticates for gated models; the token is never logged.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A repository reference parsed from `hf:owner/name[@revision]`.
#[derive(Debug, PartialEq)]
pub struct RepoRef {
    pub repo: String,
    pub revision: String,
}

impl RepoRef {
    /// Parses `hf:owner/name[@revision]`; `None` when `text` is not a hub reference.
    pub fn parse(text: &str) -> Option<Result<RepoRef>> {
        let rest = text.strip_prefix("hf:")?;
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (rest, "main"),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| valid(p)) || !valid(revision) {
            return Some(Err(anyhow::anyhow!(
                "`{text}` is not a hub model: use hf:owner/name or hf:owner/name@revision"
            )));
        }
        Some(Ok(RepoRef {
            repo: repo.to_string(),
            revision: revision.to_string(),
        }))
    }
}

/// Where the files go: `$HUAXIAN_CACHE`, else `$XDG_CACHE_HOME/huaxian/hub`, else
/// `~/.cache/huaxian/hub`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HUAXIAN_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huaxian").join("hub")
}

/// Downloads what a render of `reference` needs into the cache and returns the local folder.
/// `half` prefers the `.fp16` weight files.
pub fn fetch(reference: &RepoRef, half: bool) -> Result<PathBuf> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let hub = Hub {
        endpoint: endpoint.trim_end_matches('/').to_string(),
        token,
        reference,
        dir: cache_dir()
            .join(reference.repo.replace('/', "--"))
            .join(&reference.revision),
    };

    hub.required("model_index.json")?;
    hub.required("scheduler/scheduler_config.json")?;
    if !hub.optional("tokenizer/tokenizer.json")? {
        hub.required("tokenizer/vocab.json")?;
        hub.required("tokenizer/merges.txt")?;
    }
    hub.optional("tokenizer/tokenizer_config.json")?;
    hub.optional("tokenizer/special_tokens_map.json")?;
    for (component, stem) in [
        ("text_encoder", "model"),
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
    ] {
        hub.required(&format!("{component}/config.json"))?;
        let plain = format!("{component}/{stem}.safetensors");
        let variant = format!("{component}/{stem}.fp16.safetensors");
        let (first, second) = if half {
            (variant, plain)
        } else {
            (plain, variant)
        };
        if !hub.optional(&first)? && !hub.optional(&second)? {
            bail!(
                "{} has no safetensors weights for {component} (looked for {first} and \
                 {second}); huaxian does not load pickled .bin files",
                reference.repo
            );
        }
    }
    Ok(hub.dir)
}

struct Hub<'a> {
    endpoint: String,
    token: Option<String>,
    reference: &'a RepoRef,
    dir: PathBuf,
}

impl Hub<'_> {
    fn required(&self, file: &str) -> Result<()> {
        if !self.optional(file)? {
            bail!(
                "{}@{} has no {file}: is it a diffusers Stable Diffusion repository?",
                self.reference.repo,
                self.reference.revision
            );
        }
        Ok(())
    }

    /// Downloads `file` unless cached; false when the repository does not have it.
    fn optional(&self, file: &str) -> Result<bool> {
        let target = self.dir.join(file);
        if target.is_file() {
            return Ok(true);
        }
        let url = format!(
            "{}/{}/resolve/{}/{file}",
            self.endpoint, self.reference.repo, self.reference.revision
        );
        let mut request = ureq::get(&url);
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(404, _)) => return Ok(false),
            Err(ureq::Error::Status(code @ (401 | 403), _)) => bail!(
                "the hub refused {} ({code}): the model may be gated; accept its licence and \
                 set HF_TOKEN",
                self.reference.repo
            ),
            Err(ureq::Error::Status(code, _)) => {
                bail!(
                    "the hub answered {code} for {file} of {}",
                    self.reference.repo
                )
            }
            Err(e) => bail!(
                "cannot reach {} to fetch {}: {e}; check the connection or pass a local \
                 model folder",
                self.endpoint,
                self.reference.repo
            ),
        };
        tracing::info!(repo = %self.reference.repo, file, "downloading");
        save(response.into_reader(), &target)
            .with_context(|| format!("downloading {file} of {}", self.reference.repo))?;
        Ok(true)
    }
}

/// Writes to a `.part` file and renames it into place, so the cache never holds a torn file.
fn save(mut reader: impl Read, target: &Path) -> Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let partial = target.with_extension("part");
    let mut out = BufWriter::new(
        File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?,
    );
    std::io::copy(&mut reader, &mut out)?;
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, target)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_bad_ones_say_why() {
        let ok = RepoRef::parse("hf:stabilityai/stable-diffusion-2-1@fp16")
            .expect("hub reference")
            .expect("valid");
        assert_eq!(ok.repo, "stabilityai/stable-diffusion-2-1");
        assert_eq!(ok.revision, "fp16");
        assert!(RepoRef::parse("models/sd15").is_none());
        for bad in ["hf:", "hf:noslash", "hf:a/b/c", "hf:../x", "hf:a/b@"] {
            let err = RepoRef::parse(bad).expect("hub reference").expect_err(bad);
            assert!(err.to_string().contains("hf:owner/name"), "{err}");
        }
    }
}

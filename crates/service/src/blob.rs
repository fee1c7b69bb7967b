//! The blob store: where images live, through `object_store`.
//!
//! A local folder by default; any S3-compatible store (`s3://bucket/prefix`, with the usual
//! `AWS_*` variables for credentials, region and endpoint) when workers run on several
//! machines. Keys are `/`-separated relative paths chosen by the caller.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store `{url}`: {message}")]
    Open { url: String, message: String },
    #[error("blob {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("blob {key} does not exist")]
    NotFound { key: String },
    #[error("blob {key} is {size} bytes, over the limit of {limit}")]
    TooLarge { key: String, size: u64, limit: u64 },
    #[error("blob key `{0}` is not a relative path of plain names")]
    BadKey(String),
}

/// Handle on the blob store; cheap to clone.
#[derive(Clone, Debug)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl BlobStore {
    /// Opens `url`: `file:///abs/dir` or a plain path (created if missing), `s3://bucket[/prefix]`,
    /// or `memory://` (tests).
    pub fn open(url: &str) -> Result<Self, BlobError> {
        let open_error = |message: String| BlobError::Open {
            url: url.to_string(),
            message,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = if url == "memory://" {
            (Arc::new(InMemory::new()), Path::default())
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(open_error("no bucket named: use s3://bucket/prefix".into()));
            }
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| open_error(e.to_string()))?;
            (Arc::new(store), Path::from(prefix))
        } else if url.contains("://") && !url.starts_with("file://") {
            return Err(open_error(
                "unknown scheme: use a folder path, file:///dir, s3://bucket/prefix or memory://"
                    .into(),
            ));
        } else {
            let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
            std::fs::create_dir_all(&dir)
                .map_err(|e| open_error(format!("cannot create the folder: {e}")))?;
            let store =
                LocalFileSystem::new_with_prefix(&dir).map_err(|e| open_error(e.to_string()))?;
            (Arc::new(store), Path::default())
        };
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
        })
    }

    /// The URL the store was opened with, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, key: &str) -> Result<Path, BlobError> {
        let parts: Vec<&str> = key.split('/').collect();
        let plain =
            |part: &&str| !part.is_empty() && *part != "." && *part != ".." && !part.contains('\\');
        if parts.is_empty() || !parts.iter().all(plain) {
            return Err(BlobError::BadKey(key.to_string()));
        }
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.child(part);
        }
        Ok(path)
    }

    /// Writes `bytes` under `key`, replacing what was there. Local writes are atomic: a
    /// reader sees the old blob or the whole new one.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let path = self.path(key)?;
        self.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| store_error(key, source))?;
        Ok(())
    }

    /// Reads the blob under `key`, refusing one over `limit` bytes before reading it.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let path = self.path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|source| store_error(key, source))?;
        if meta.size > limit {
            return Err(BlobError::TooLarge {
                key: key.to_string(),
                size: meta.size,
                limit,
            });
        }
        let bytes = self
            .store
            .get(&path)
            .await
            .map_err(|source| store_error(key, source))?
            .bytes()
            .await
            .map_err(|source| store_error(key, source))?;
        Ok(bytes.to_vec())
    }

    /// Whether a blob exists under `key`.
    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.store.head(&self.path(key)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(store_error(key, source)),
        }
    }

    /// Deletes the blob under `key`; deleting a missing blob is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(store_error(key, source)),
        }
    }

    /// Every key under `prefix` (a `/`-separated folder), for sweeps and tests.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        use futures_util::TryStreamExt;
        let base = self.path(prefix)?;
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|source| store_error(prefix, source))?;
        let strip = self.prefix.as_ref().len();
        Ok(metas
            .into_iter()
            .map(|meta| {
                let full = meta.location.as_ref();
                full.get(strip..)
                    .unwrap_or(full)
                    .trim_start_matches('/')
                    .to_string()
            })
            .collect())
    }
}

fn store_error(key: &str, source: object_store::Error) -> BlobError {
    match source {
        object_store::Error::NotFound { .. } => BlobError::NotFound {
            key: key.to_string(),
        },
        source => BlobError::Store {
            key: key.to_string(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_round_trip_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().to_str().unwrap()).unwrap();
        blobs.put("jobs/a/1/0.png", vec![1, 2, 3]).await.unwrap();
        assert_eq!(
            blobs.get("jobs/a/1/0.png", 10).await.unwrap(),
            vec![1, 2, 3]
        );
        assert!(dir.path().join("jobs/a/1/0.png").is_file());
        assert!(matches!(
            blobs.get("jobs/a/1/0.png", 2).await,
            Err(BlobError::TooLarge { size: 3, .. })
        ));
        assert!(matches!(
            blobs.get("jobs/a/1/9.png", 10).await,
            Err(BlobError::NotFound { .. })
        ));
        assert_eq!(blobs.list("jobs/a").await.unwrap(), vec!["jobs/a/1/0.png"]);
        blobs.delete("jobs/a/1/0.png").await.unwrap();
        blobs.delete("jobs/a/1/0.png").await.unwrap();
        assert!(!blobs.exists("jobs/a/1/0.png").await.unwrap());
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_store() {
        let blobs = BlobStore::open("memory://").unwrap();
        for key in ["../etc/passwd", "a//b", "/abs", "a/./b", ""] {
            assert!(
                matches!(blobs.put(key, vec![]).await, Err(BlobError::BadKey(_))),
                "{key}"
            );
        }
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let error = BlobStore::open("ftp://host/dir").unwrap_err();
        assert!(error.to_string().contains("unknown scheme"), "{error}");
    }
}

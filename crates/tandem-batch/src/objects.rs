//! Inputs (and the `--output` file) in object stores: `s3://`, `gs://`,
//! `az://` (and `abfs[s]://`, `adl://`, `azure://`), and `http(s)://` URLs,
//! through the `object_store` crate that DataFusion already scans with.
//!
//! Stores are made on first use from the URL and the environment the
//! cloud SDKs use: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT` (S3-compatible servers such as MinIO),
//! `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_APPLICATION_CREDENTIALS`;
//! `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ... An
//! `http://` or `https://` URL is a plain web server: a file is read with
//! ranged `GET`s, a directory is listed with WebDAV `PROPFIND`.
//!
//! [`ObjectStores`] is the registry every tandem session uses (local runs,
//! the Ballista client, scheduler and executors), so an executor resolves
//! `s3://bucket/...` with its own credentials, as the client did.

use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme};
use url::Url;

use crate::error::BatchError;

/// The URL schemes tandem reads inputs from, besides local paths.
pub const SCHEMES: &[&str] = &[
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https",
];

/// The input is a URL of an object store (not a local path or `file://`).
pub fn is_remote(path: &str) -> bool {
    path.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// Object stores by `scheme://host[:port]`, made from the environment on
/// first use.
#[derive(Debug, Default)]
pub struct ObjectStores {
    inner: DefaultObjectStoreRegistry,
}

impl ObjectStores {
    /// A registry with the local file system (as DataFusion's default).
    pub fn new() -> Self {
        ObjectStores {
            inner: DefaultObjectStoreRegistry::new(),
        }
    }
}

impl ObjectStoreRegistry for ObjectStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        let store = make_store(url).map_err(|e| DataFusionError::External(e.into()))?;
        // Two tasks may race to make the same store; either one serves.
        self.inner.register_store(url, store.clone());
        Ok(store)
    }
}

/// A runtime whose object stores come from [`ObjectStores`].
pub fn runtime_env() -> Arc<RuntimeEnv> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(ObjectStores::new()))
        .build_arc()
        .unwrap_or_else(|_| Arc::new(RuntimeEnv::default()))
}

/// Makes the store that serves `url` (its bucket, container or host).
pub fn make_store(url: &Url) -> Result<Arc<dyn ObjectStore>, String> {
    let (scheme, _) = ObjectStoreScheme::parse(url).map_err(|e| e.to_string())?;
    let base = format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    );
    let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
        ObjectStoreScheme::AmazonS3 => AmazonS3Builder::from_env()
            .with_url(url.as_str())
            .build()
            .map(|s| Arc::new(s) as _),
        ObjectStoreScheme::GoogleCloudStorage => GoogleCloudStorageBuilder::from_env()
            .with_url(url.as_str())
            .build()
            .map(|s| Arc::new(s) as _),
        ObjectStoreScheme::MicrosoftAzure => MicrosoftAzureBuilder::from_env()
            .with_url(url.as_str())
            .build()
            .map(|s| Arc::new(s) as _),
        ObjectStoreScheme::Http => HttpBuilder::new()
            .with_url(base)
            .with_client_options(ClientOptions::new().with_allow_http(url.scheme() == "http"))
            .build()
            .map(|s| Arc::new(s) as _),
        other => return Err(format!("no object store for {other:?} URLs")),
    };
    built.map_err(|e| e.to_string())
}

/// The objects a remote glob (`s3://bucket/day=*/part-*.parquet`) matches,
/// as full URLs in name order. DataFusion expands globs in local paths
/// only; a remote one is listed here (from the literal part before the
/// first wildcard) and read as that list of objects.
pub async fn expand_glob(path: &str) -> Result<Vec<String>, BatchError> {
    let err = |detail: String| BatchError::Input {
        path: path.to_owned(),
        detail,
    };
    let url = Url::parse(path).map_err(|e| err(format!("not a valid URL: {e}")))?;
    let store = make_store(&url).map_err(err)?;
    let (_, key) = ObjectStoreScheme::parse(&url).map_err(|e| err(e.to_string()))?;
    let pattern = glob::Pattern::new(key.as_ref()).map_err(|e| err(format!("bad glob: {e}")))?;
    let literal = key.as_ref().split(['*', '?', '[']).next().unwrap_or("");
    let dir = literal.rsplit_once('/').map_or("", |(d, _)| d);
    let listed: Vec<_> = store
        .list(Some(&object_store::path::Path::from(dir)))
        .try_collect()
        .await
        .map_err(|e| err(e.to_string()))?;
    let base = &url[..url::Position::AfterPort];
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..glob::MatchOptions::new()
    };
    let mut found: Vec<String> = listed
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| pattern.matches_with(k, options))
        .map(|k| format!("{base}/{k}"))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(err("no object matches the glob".into()));
    }
    Ok(found)
}

/// For a remote input that is not a glob: checks that it exists and, when
/// it is not one object but a prefix ("directory"), the name of a data file
/// under it, from which the format is told. Errors name the URL.
pub async fn first_file(path: &str) -> Result<String, BatchError> {
    let err = |detail: String| BatchError::Input {
        path: path.to_owned(),
        detail,
    };
    let url = Url::parse(path).map_err(|e| err(format!("not a valid URL: {e}")))?;
    let store = make_store(&url).map_err(err)?;
    let (_, key) = ObjectStoreScheme::parse(&url).map_err(|e| err(e.to_string()))?;
    if !key.as_ref().is_empty() && !path.ends_with('/') {
        match store.head(&key).await {
            Ok(meta) => return Ok(meta.location.to_string()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(err(e.to_string())),
        }
    }
    // Not an object: a prefix with data files under it?
    let listed: Vec<_> = store
        .list(Some(&key))
        .try_collect()
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut names: Vec<String> = listed.into_iter().map(|m| m.location.to_string()).collect();
    names.sort();
    names
        .into_iter()
        .find(|n| {
            let n = n.to_ascii_lowercase();
            n.ends_with(".parquet") || n.ends_with(".pq") || n.ends_with(".csv")
        })
        .ok_or_else(|| {
            err("not found (no such object, and no .parquet or .csv objects under it)".into())
        })
}

/// Checks that objects can be written under `url`'s parent before a run
/// starts (the bucket or container exists and the credentials can list
/// it), so that a bad `--output` fails before anything is written.
pub async fn check_writable(url: &str) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    let store = make_store(&parsed)?;
    let (_, key) = ObjectStoreScheme::parse(&parsed).map_err(|e| e.to_string())?;
    if key.as_ref().is_empty() || url.ends_with('/') {
        return Err("name an object (a .parquet file), not a bucket or prefix".into());
    }
    let parent = key
        .as_ref()
        .rsplit_once('/')
        .map(|(d, _)| object_store::path::Path::from(d));
    store
        .list_with_delimiter(parent.as_ref())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Uploads the local file `local` as the object `url`, in one `PUT` up to
/// 64 MiB and as a multipart upload above (the object appears when the
/// upload completes).
pub async fn upload(local: &std::path::Path, url: &str) -> Result<(), String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a valid URL: {e}"))?;
    let store = make_store(&parsed)?;
    let (_, key) = ObjectStoreScheme::parse(&parsed).map_err(|e| e.to_string())?;
    let size = std::fs::metadata(local).map_err(|e| e.to_string())?.len();
    if size <= 64 << 20 {
        let bytes = std::fs::read(local).map_err(|e| e.to_string())?;
        store
            .put(&key, object_store::PutPayload::from(bytes))
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let upload = store.put_multipart(&key).await.map_err(|e| e.to_string())?;
    let mut writer = object_store::WriteMultipart::new(upload);
    let mut file = std::fs::File::open(local).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        writer
            .wait_for_capacity(4)
            .await
            .map_err(|e| e.to_string())?;
        writer.write(&buf[..n]);
    }
    writer.finish().await.map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_urls_are_told_from_local_paths() {
        assert!(is_remote("s3://bucket/features/"));
        assert!(is_remote("GS://bucket/x.parquet"));
        assert!(is_remote("https://data.example.com/x.csv"));
        assert!(is_remote("abfss://c@acct.dfs.core.windows.net/x.parquet"));
        assert!(!is_remote("/data/features.parquet"));
        assert!(!is_remote("file:///data/features.parquet"));
        assert!(!is_remote("data/*.parquet"));
        assert!(!is_remote("ftp://host/x.parquet"));
    }

    #[test]
    fn stores_are_made_per_scheme() {
        let url = Url::parse("http://127.0.0.1:9/data/x.parquet").unwrap();
        assert!(make_store(&url).is_ok());
        let url = Url::parse("memory:///x").unwrap();
        let e = make_store(&url).err().unwrap_or_default();
        assert!(e.contains("Memory"), "{e}");
    }
}

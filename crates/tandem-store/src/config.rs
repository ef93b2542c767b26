//! Store URLs and options.
//!
//! | URL | backend |
//! |---|---|
//! | `redis://[user:pass@]host:port[/db]`, `rediss://...` (TLS) | Redis |
//! | `redis-cluster://host:port[,host:port...]`, `rediss-cluster://...` | Redis Cluster |
//! | `PATH.redb`, `file:PATH` | embedded (redb file) |
//!
//! Options ride in the query string, on every backend:
//! `namespace`, `prediction_prefix`, `feature_prefix`, `activity_stem`,
//! `timeout_ms`, `activity_bucket_secs`, `activity_retention_secs`,
//! `purge_interval_secs` and `cache_mb` (embedded store),
//! `ca_file` (PEM of a private CA for TLS), `insecure` (TLS without
//! certificate checks, for tests only).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::StoreError;
use crate::layout::KeyLayout;

/// Options common to every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// Key prefixes.
    pub layout: KeyLayout,
    /// Upper bound on one store call, connection included (default 1 s).
    pub timeout: Duration,
    /// Width of one activity time bucket (default 5 min): look-back windows
    /// are counted in whole buckets.
    pub activity_bucket: Duration,
    /// How long activity buckets are kept (default 7 days).
    pub activity_retention: Duration,
    /// Embedded store: how often writes start a purge of expired values
    /// (default 5 min).
    pub purge_interval: Duration,
    /// Embedded store: bytes of redb's page cache (default 64 MiB; redb's
    /// own default, 1 GiB, made a batch run of 1M records into the store
    /// peak at 1 GiB of resident memory).
    pub cache_bytes: usize,
    /// TLS: a PEM file of the CA that signed the server's certificate, when
    /// it is not in the system's trust store.
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            layout: KeyLayout::default(),
            timeout: Duration::from_secs(1),
            activity_bucket: Duration::from_secs(300),
            activity_retention: Duration::from_secs(7 * 24 * 3600),
            purge_interval: Duration::from_secs(300),
            cache_bytes: 64 << 20,
            ca_file: None,
        }
    }
}

/// Which backend a URL names, with what the backend needs to connect.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// A standalone Redis; the URL is in the `redis` crate's syntax.
    Redis {
        /// `redis://` or `rediss://` URL without tandem's query options.
        url: String,
    },
    /// A Redis Cluster, by its seed nodes.
    Cluster {
        /// One `redis://` (or `rediss://`) URL per seed node.
        nodes: Vec<String>,
    },
    /// The embedded store, a redb file.
    Embedded {
        /// The database file (created if missing).
        path: PathBuf,
    },
}

/// A parsed store URL: the backend and its options.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreUrl {
    /// The backend to open.
    pub backend: Backend,
    /// Options from the query string over the defaults.
    pub options: StoreOptions,
}

impl StoreUrl {
    /// Parses a store URL (see the module documentation).
    pub fn parse(input: &str) -> Result<StoreUrl, StoreError> {
        StoreUrl::parse_over(input, StoreOptions::default())
    }

    /// Parses a store URL whose query options apply over `defaults`
    /// instead of [`StoreOptions::default`].
    pub fn parse_over(input: &str, defaults: StoreOptions) -> Result<StoreUrl, StoreError> {
        let invalid = |detail: String| StoreError::InvalidUrl {
            url: redact(input),
            detail,
        };
        let (base, query) = match input.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (input, None),
        };
        let mut options = defaults;
        let mut insecure = false;
        if let Some(query) = query {
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let v = url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                let secs = |v: &str| -> Result<Duration, StoreError> {
                    match v.parse::<u64>() {
                        Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
                        _ => Err(invalid(format!(
                            "{k} must be a positive integer, got {v:?}"
                        ))),
                    }
                };
                match k {
                    "namespace" => options.layout.namespace = v,
                    "prediction_prefix" => options.layout.prediction_prefix = v,
                    "feature_prefix" => options.layout.feature_prefix = v,
                    "activity_stem" => options.layout.activity_stem = v,
                    "timeout_ms" => match v.parse::<u64>() {
                        Ok(n) if n > 0 => options.timeout = Duration::from_millis(n),
                        _ => {
                            return Err(invalid(format!(
                                "timeout_ms must be a positive integer, got {v:?}"
                            )));
                        }
                    },
                    "activity_bucket_secs" => options.activity_bucket = secs(&v)?,
                    "activity_retention_secs" => options.activity_retention = secs(&v)?,
                    "purge_interval_secs" => options.purge_interval = secs(&v)?,
                    "cache_mb" => match v.parse::<usize>() {
                        Ok(n) if n > 0 && n <= 1 << 20 => options.cache_bytes = n << 20,
                        _ => {
                            return Err(invalid(format!(
                                "cache_mb must be a whole number of MiB from 1 to 1048576, got {v:?}"
                            )));
                        }
                    },
                    "insecure" => insecure = matches!(v.as_str(), "" | "1" | "true"),
                    "ca_file" if !v.is_empty() => options.ca_file = Some(v.into()),
                    other => {
                        return Err(invalid(format!(
                            "unknown option {other:?} (known: namespace, prediction_prefix, feature_prefix, activity_stem, timeout_ms, activity_bucket_secs, activity_retention_secs, purge_interval_secs, cache_mb, ca_file, insecure)"
                        )));
                    }
                }
            }
        }
        if options.layout.prediction_prefix == options.layout.feature_prefix {
            return Err(invalid(
                "prediction_prefix and feature_prefix must differ".into(),
            ));
        }
        let fragment = if insecure { "#insecure" } else { "" };
        let backend = if let Some(rest) = base.strip_prefix("redis-cluster://") {
            Backend::Cluster {
                nodes: cluster_nodes("redis", rest, fragment).map_err(invalid)?,
            }
        } else if let Some(rest) = base.strip_prefix("rediss-cluster://") {
            Backend::Cluster {
                nodes: cluster_nodes("rediss", rest, fragment).map_err(invalid)?,
            }
        } else if base.starts_with("redis://") || base.starts_with("rediss://") {
            let parsed = url::Url::parse(base).map_err(|e| invalid(e.to_string()))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("no host".into()));
            }
            Backend::Redis {
                url: format!("{base}{fragment}"),
            }
        } else if let Some(path) = base.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(invalid("no file path".into()));
            }
            Backend::Embedded { path: path.into() }
        } else if let Some((scheme, _)) = base.split_once("://") {
            // `embedded:///data/x.redb` would otherwise be a path, relative
            // to the working directory, under a directory `embedded:`.
            return Err(invalid(format!(
                "unknown scheme {scheme}:// (expected redis://, rediss://, redis-cluster://, rediss-cluster://, or file:PATH for the embedded store)"
            )));
        } else if base.ends_with(".redb") {
            Backend::Embedded { path: base.into() }
        } else {
            return Err(invalid(
                "expected redis://, rediss://, redis-cluster://, a path ending in .redb, or file:PATH"
                    .into(),
            ));
        };
        Ok(StoreUrl { backend, options })
    }
}

fn cluster_nodes(scheme: &str, rest: &str, fragment: &str) -> Result<Vec<String>, String> {
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{auth}{h}{fragment}"))
        .collect();
    if nodes.is_empty() {
        return Err("no cluster nodes".into());
    }
    for node in &nodes {
        let parsed = url::Url::parse(node).map_err(|e| format!("{}: {e}", redact(node)))?;
        if parsed.port().is_none() {
            return Err(format!("cluster node {} needs a port", redact(node)));
        }
        if parsed.path().len() > 1 {
            return Err("Redis Cluster has one database; remove the /db path".into());
        }
    }
    Ok(nodes)
}

/// A URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, hosts)) => {
                let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                if auth.contains(':') {
                    format!("{scheme}://{user}:***@{hosts}")
                } else {
                    format!("{scheme}://***@{hosts}")
                }
            }
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_keep_credentials_and_db_for_the_client() {
        let u = StoreUrl::parse(
            "redis://user:secret@127.0.0.1:6380/2?namespace=churn:prod:&timeout_ms=50",
        )
        .unwrap();
        assert_eq!(
            u.backend,
            Backend::Redis {
                url: "redis://user:secret@127.0.0.1:6380/2".into()
            }
        );
        assert_eq!(u.options.layout.namespace, "churn:prod:");
        assert_eq!(u.options.timeout, Duration::from_millis(50));
    }

    #[test]
    fn cluster_urls_list_every_seed() {
        let u = StoreUrl::parse("redis-cluster://:pw@127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert_eq!(
            u.backend,
            Backend::Cluster {
                nodes: vec![
                    "redis://:pw@127.0.0.1:7000".into(),
                    "redis://:pw@127.0.0.1:7001".into()
                ]
            }
        );
        assert!(StoreUrl::parse("redis-cluster://127.0.0.1").is_err());
        assert!(StoreUrl::parse("redis-cluster://127.0.0.1:7000/3").is_err());
    }

    #[test]
    fn embedded_paths() {
        for (url, path) in [
            ("data/store.redb", "data/store.redb"),
            ("file:/tmp/x.db", "/tmp/x.db"),
            ("file:///tmp/x.db", "/tmp/x.db"),
        ] {
            assert_eq!(
                StoreUrl::parse(url).unwrap().backend,
                Backend::Embedded { path: path.into() }
            );
        }
    }

    #[test]
    fn an_unknown_scheme_is_refused_not_taken_for_a_path() {
        for url in [
            "embedded:///tmp/x.redb",
            "redb://data/x.redb",
            "memcached://h:1",
        ] {
            let err = StoreUrl::parse(url).expect_err(url).to_string();
            assert!(err.contains("unknown scheme"), "{url}: {err}");
        }
    }

    #[test]
    fn the_embedded_cache_is_sized_in_mib() {
        assert_eq!(
            StoreUrl::parse("x.redb").unwrap().options.cache_bytes,
            64 << 20
        );
        assert_eq!(
            StoreUrl::parse("x.redb?cache_mb=300")
                .unwrap()
                .options
                .cache_bytes,
            300 << 20
        );
        for bad in ["0", "-1", "lots", "2097152"] {
            let err = StoreUrl::parse(&format!("x.redb?cache_mb={bad}")).unwrap_err();
            assert!(err.to_string().contains("cache_mb"), "{err}");
        }
    }

    #[test]
    fn options_in_the_url_apply_over_the_callers_defaults() {
        let defaults = StoreOptions {
            timeout: Duration::from_secs(10),
            ..StoreOptions::default()
        };
        let plain = StoreUrl::parse_over("redis://h:1?namespace=n:", defaults.clone()).unwrap();
        assert_eq!(plain.options.timeout, Duration::from_secs(10));
        assert_eq!(plain.options.layout.namespace, "n:");
        let set = StoreUrl::parse_over("redis://h:1?timeout_ms=250", defaults).unwrap();
        assert_eq!(set.options.timeout, Duration::from_millis(250));
        assert_eq!(
            StoreUrl::parse("redis://h:1").unwrap().options.timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn bad_urls_name_the_problem_without_the_password() {
        let err = StoreUrl::parse("redis://u:hunter2@h:1?timeout_ms=0").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("timeout_ms"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        for bad in ["mysql://x", "redis://h:1?colour=red", "store.db", "file:"] {
            assert!(
                matches!(StoreUrl::parse(bad), Err(StoreError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }
}

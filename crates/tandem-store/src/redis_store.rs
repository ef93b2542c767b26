//! Redis and Redis Cluster backends (the `redis` crate, async).
//!
//! Standalone Redis goes through a [`ConnectionManager`], which reconnects
//! by itself after the server comes back. Bulk reads are `MGET`s of up to
//! [`CHUNK`] keys and bulk writes `MSET`s of up to [`CHUNK`] keys (values
//! without a TTL) or pipelines of `SET key value PX ttl`, several in flight
//! at once on the one multiplexed connection. On a cluster, reads
//! are `MGET`s that the client splits per slot, and writes are grouped by
//! hash slot into one pipeline or `MSET` per slot (a cluster pipeline or
//! multi-key command must stay in one slot), many in flight at once. Every round trip is bounded by the
//! configured timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{self, StreamExt, TryStreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, ProtocolVersion, RedisError, ServerErrorKind};
use tandem_core::{FeatureRow, PredictionRecord};
use tokio::sync::OnceCell;

use crate::api::{
    ActiveEntity, ActivityLog, ChangeSink, FeatureStore, PredictionEntry, PredictionStore, Store,
    bucket_of, buckets_in_window, top_k,
};
use crate::config::{StoreOptions, redact};
use crate::error::{Lookup, StoreError};
use crate::layout::{
    EncodedRows, decode_features, decode_prediction, encode_features, encode_prediction, hash_slot,
};

/// Keys per `MGET` and commands per pipeline.
pub const CHUNK: usize = 1000;
/// Round trips in flight at once for one bulk call.
const IN_FLIGHT: usize = 16;
/// Slot pipelines in flight at once for one bulk call on a cluster.
const CLUSTER_IN_FLIGHT: usize = 256;

enum Conn {
    Single(ConnectionManager),
    Cluster(Box<ClusterConn>),
}

struct ClusterConn {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

/// One value to write: key, encoded value, TTL.
type Write = (String, Vec<u8>, Option<Duration>);
/// Values read by one `MGET`, and where they go in the answer.
type MgetAnswer = (Vec<usize>, Vec<Option<Vec<u8>>>);

/// A store on Redis or Redis Cluster.
pub struct RedisStore {
    conn: Conn,
    options: StoreOptions,
    backend: &'static str,
    description: String,
    /// Activity counts go as one script call per slice until the server
    /// refuses scripts (ACLs without `@scripting`, servers without Lua);
    /// then as pipelines of `HINCRBY`.
    scripts: AtomicBool,
    /// For standalone Redis, a client of the same server speaking RESP3,
    /// for the connection that reports changes to the memory tier.
    tracking: Option<redis::Client>,
}

impl RedisStore {
    /// Connects lazily to a standalone Redis (`redis://` or `rediss://`):
    /// opening never waits for the server; the first call connects, and
    /// later calls reconnect after a failure.
    pub fn open(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let invalid = |e: RedisError| StoreError::InvalidUrl {
            url: redact(url),
            detail: e.to_string(),
        };
        let client = match tls_certificates(&options, url)? {
            Some(certs) => redis::Client::build_with_tls(url, certs).map_err(invalid)?,
            None => redis::Client::open(url).map_err(invalid)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let tracking = redis::Client::open(info.set_redis_settings(resp3)).map_err(invalid)?;
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(invalid)?;
        let host = url.split_once("://").map_or(url, |(_, r)| r);
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        Ok(RedisStore {
            conn: Conn::Single(manager),
            options,
            backend: "redis",
            description: format!("redis {}", host.trim_end_matches("#insecure")),
            scripts: AtomicBool::new(true),
            tracking: Some(tracking),
        })
    }

    /// Connects lazily to a Redis Cluster through its seed nodes.
    pub fn open_cluster(nodes: &[String], options: StoreOptions) -> Result<Self, StoreError> {
        let mut builder = ClusterClientBuilder::new(nodes.to_vec());
        if let Some(certs) = tls_certificates(&options, nodes.first().map_or("", String::as_str))? {
            builder = builder.certs(certs);
        }
        let client = builder
            .connection_timeout(options.timeout)
            .response_timeout(options.timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()
            .map_err(|e| StoreError::InvalidUrl {
                url: nodes
                    .iter()
                    .map(|n| redact(n))
                    .collect::<Vec<_>>()
                    .join(","),
                detail: e.to_string(),
            })?;
        let hosts: Vec<&str> = nodes
            .iter()
            .map(|n| {
                let h = n.split_once("://").map_or(n.as_str(), |(_, r)| r);
                h.rsplit_once('@')
                    .map_or(h, |(_, h)| h)
                    .trim_end_matches("#insecure")
            })
            .collect();
        Ok(RedisStore {
            conn: Conn::Cluster(Box::new(ClusterConn {
                client,
                conn: OnceCell::new(),
            })),
            options,
            backend: "redis-cluster",
            description: format!("redis-cluster {}", hosts.join(",")),
            scripts: AtomicBool::new(true),
            tracking: None,
        })
    }

    fn error(&self, e: RedisError) -> StoreError {
        classify(self.backend, self.options.timeout, &e)
    }

    /// Runs one round trip under the timeout.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        self.bounded_raw(fut).await?.map_err(|e| self.error(e))
    }

    /// As [`RedisStore::bounded`], with the client's error as it came.
    async fn bounded_raw<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<Result<T, RedisError>, StoreError> {
        tokio::time::timeout(self.options.timeout, fut)
            .await
            .map_err(|_| StoreError::TimedOut {
                backend: self.backend,
                after: self.options.timeout,
            })
    }

    async fn cluster_conn(
        &self,
        client: &redis::cluster::ClusterClient,
        cell: &OnceCell<ClusterConnection>,
    ) -> Result<ClusterConnection, StoreError> {
        let conn = cell
            .get_or_try_init(|| self.bounded(client.get_async_connection()))
            .await?;
        Ok(conn.clone())
    }

    /// Sends a command or pipeline on whichever connection this store has.
    async fn query<T: redis::FromRedisValue + Send>(
        &self,
        run: impl AsyncQuery,
    ) -> Result<T, StoreError> {
        self.query_raw(run).await?.map_err(|e| self.error(e))
    }

    /// As [`RedisStore::query`], with the client's error as it came (a
    /// time-out or a cluster that cannot be reached is still a
    /// [`StoreError`]).
    async fn query_raw<T: redis::FromRedisValue + Send>(
        &self,
        run: impl AsyncQuery,
    ) -> Result<Result<T, RedisError>, StoreError> {
        match &self.conn {
            Conn::Single(manager) => {
                let mut c = manager.clone();
                self.bounded_raw(run.query::<T, _>(&mut c)).await
            }
            Conn::Cluster(cluster) => {
                let mut c = self.cluster_conn(&cluster.client, &cluster.conn).await?;
                self.bounded_raw(run.query::<T, _>(&mut c)).await
            }
        }
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let Conn::Single(_) = &self.conn
            && keys.len() <= CHUNK
        {
            // The serving path's case: one merged read, one command.
            let mut cmd = redis::cmd("MGET");
            for key in keys {
                cmd.arg(key);
            }
            let values = self.query::<Vec<Option<Vec<u8>>>>(cmd).await?;
            if values.len() != keys.len() {
                return Err(StoreError::Backend {
                    backend: self.backend,
                    detail: format!(
                        "MGET of {} keys answered {} values",
                        keys.len(),
                        values.len()
                    ),
                });
            }
            return Ok(values);
        }
        // Standalone: MGETs of CHUNK keys. Cluster: one MGET per hash slot
        // (a cluster MGET must stay in one slot; the client would otherwise
        // split it into one request per key's slot anyway).
        let groups: Vec<Vec<usize>> = match &self.conn {
            Conn::Single(_) => (0..keys.len())
                .collect::<Vec<_>>()
                .chunks(CHUNK)
                .map(<[usize]>::to_vec)
                .collect(),
            Conn::Cluster(_) => {
                let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
                for (i, key) in keys.iter().enumerate() {
                    by_slot
                        .entry(hash_slot(key.as_bytes()))
                        .or_default()
                        .push(i);
                }
                by_slot
                    .into_values()
                    .flat_map(|g| g.chunks(CHUNK).map(<[usize]>::to_vec).collect::<Vec<_>>())
                    .collect()
            }
        };
        let in_flight = match &self.conn {
            Conn::Single(_) => IN_FLIGHT,
            Conn::Cluster(_) => CLUSTER_IN_FLIGHT,
        };
        let requests: Vec<(Vec<usize>, redis::Cmd)> = groups
            .into_iter()
            .map(|group| {
                let mut cmd = redis::cmd("MGET");
                for &i in &group {
                    cmd.arg(&keys[i]);
                }
                (group, cmd)
            })
            .collect();
        let answers: Vec<MgetAnswer> = stream::iter(requests)
            .map(|(group, cmd)| async move {
                let values = self.query::<Vec<Option<Vec<u8>>>>(cmd).await?;
                Ok::<_, StoreError>((group, values))
            })
            .buffer_unordered(in_flight)
            .try_collect()
            .await?;
        let mut out: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        for (group, values) in answers {
            if values.len() != group.len() {
                return Err(StoreError::Backend {
                    backend: self.backend,
                    detail: format!(
                        "MGET of {} keys answered {} values",
                        group.len(),
                        values.len()
                    ),
                });
            }
            for (i, v) in group.into_iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Writes `(key, value, ttl)` triples: a chunk without TTLs is one
    /// `MSET` (one command, one reply, atomic, for Redis as for us), a chunk
    /// with TTLs a pipeline of `SET key value PX ms`.
    async fn set_many(&self, items: Vec<Write>) -> Result<(), StoreError> {
        let writes = self.per_slot(
            items.len(),
            |i| hash_slot(items[i].0.as_bytes()),
            |chunk| {
                let chunk = chunk.iter().map(|&i| &items[i]);
                let plain = chunk.clone().all(|(_, _, ttl)| ttl.is_none());
                let bytes = chunk.clone().map(|(k, v, _)| k.len() + v.len()).sum();
                let mut bulk = BulkWrite::new(chunk.len(), bytes, plain);
                for (key, value, ttl) in chunk {
                    bulk.push(key.as_bytes(), value, *ttl);
                }
                bulk.finish()
            },
        );
        self.send_all(writes).await
    }

    /// Items `0..n` in chunks of up to [`CHUNK`], each made into one round
    /// trip by `write`; on a cluster, the items of a chunk share a hash slot
    /// (`slot` of each).
    fn per_slot(
        &self,
        n: usize,
        slot: impl Fn(usize) -> u16,
        write: impl Fn(&[usize]) -> Bulk,
    ) -> Vec<Bulk> {
        let all: Vec<usize> = (0..n).collect();
        match &self.conn {
            Conn::Single(_) => all.chunks(CHUNK).map(write).collect(),
            Conn::Cluster(_) => {
                let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
                for i in all {
                    by_slot.entry(slot(i)).or_default().push(i);
                }
                by_slot
                    .values()
                    .flat_map(|group| group.chunks(CHUNK))
                    .map(write)
                    .collect()
            }
        }
    }

    /// Writes encoded rows under the keys `key_into` writes for their
    /// entities (into a cleared buffer): `MSET`s without a TTL, `SET ...
    /// PX` with one, per hash slot on a cluster. No key string or value
    /// buffer is made per row.
    async fn put_encoded(
        &self,
        rows: EncodedRows,
        ttl: Option<Duration>,
        key_into: impl Fn(&mut Vec<u8>, &str),
    ) -> Result<(), StoreError> {
        let mut key = Vec::with_capacity(64);
        let mut key_of = |i: usize| -> u16 {
            key.clear();
            key_into(&mut key, rows.get(i).0);
            hash_slot(&key)
        };
        let slots: Vec<u16> = match &self.conn {
            Conn::Single(_) => Vec::new(),
            Conn::Cluster(_) => (0..rows.len()).map(&mut key_of).collect(),
        };
        let writes = self.per_slot(
            rows.len(),
            |i| slots[i],
            |chunk| {
                let bytes = chunk.iter().map(|&i| rows.get(i).1.len() + 64).sum();
                let mut bulk = BulkWrite::new(chunk.len(), bytes, ttl.is_none());
                let mut key = Vec::with_capacity(64);
                for &i in chunk {
                    let (entity, value) = rows.get(i);
                    key.clear();
                    key_into(&mut key, entity);
                    bulk.push(&key, value, ttl);
                }
                bulk.finish()
            },
        );
        self.send_all(writes).await
    }

    async fn del_many(&self, keys: Vec<String>) -> Result<(), StoreError> {
        // A multi-key DEL is split per slot by the cluster client.
        let cmds: Vec<redis::Cmd> = keys
            .chunks(CHUNK)
            .map(|chunk| {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(chunk);
                cmd
            })
            .collect();
        stream::iter(cmds)
            .map(|cmd| self.query::<()>(cmd))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    /// Activity counts as pipelines of `HINCRBY` (servers that refuse
    /// scripts).
    async fn record_counts_piped(
        &self,
        key: &str,
        counts: &[(String, u64)],
        retention_ms: u64,
    ) -> Result<(), StoreError> {
        let pipes: Vec<redis::Pipeline> = counts
            .chunks(CHUNK)
            .map(|chunk| {
                let mut pipe = redis::Pipeline::with_capacity(chunk.len() + 1);
                for (entity, n) in chunk {
                    pipe.cmd("HINCRBY").arg(key).arg(entity.as_str()).arg(*n);
                }
                pipe.cmd("PEXPIRE").arg(key).arg(retention_ms);
                pipe
            })
            .collect();
        self.send_all(pipes).await
    }

    /// Sends commands or pipelines whose replies are only checked for
    /// errors, several at a time (more on a cluster, whose round trips go
    /// to different nodes).
    async fn send_all(&self, writes: Vec<impl AsyncQuery>) -> Result<(), StoreError> {
        let in_flight = match &self.conn {
            Conn::Single(_) => IN_FLIGHT,
            Conn::Cluster(_) => CLUSTER_IN_FLIGHT,
        };
        stream::iter(writes)
            .map(|w| self.query::<()>(w))
            .buffer_unordered(in_flight)
            .try_collect::<()>()
            .await
    }
}

/// One round trip of a bulk write.
enum Bulk {
    One(redis::Cmd),
    Many(redis::Pipeline),
}

impl AsyncQuery for Bulk {
    async fn query<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        self,
        con: &mut C,
    ) -> Result<T, RedisError> {
        match self {
            Bulk::One(cmd) => cmd.query_async(con).await,
            Bulk::Many(pipe) => pipe.query_async(con).await,
        }
    }
}

/// One bulk write being built: an `MSET` when no value has a TTL, else a
/// pipeline of `SET key value PX ms`. Buffers are sized up front, and
/// replies are checked rather than ignored (ignoring one costs the client a
/// set entry).
enum BulkWrite {
    Plain(redis::Cmd),
    Expiring(redis::Pipeline),
}

impl BulkWrite {
    /// For `n` values of `bytes` bytes with their keys, `plain` when none
    /// will carry a TTL.
    fn new(n: usize, bytes: usize, plain: bool) -> BulkWrite {
        if plain {
            let mut cmd = redis::Cmd::with_capacity(1 + 2 * n, 4 + bytes);
            cmd.arg("MSET");
            BulkWrite::Plain(cmd)
        } else {
            BulkWrite::Expiring(redis::Pipeline::with_capacity(n))
        }
    }

    fn push(&mut self, key: &[u8], value: &[u8], ttl: Option<Duration>) {
        match self {
            BulkWrite::Plain(cmd) => {
                debug_assert!(ttl.is_none());
                cmd.arg(key).arg(value);
            }
            BulkWrite::Expiring(pipe) => {
                let mut cmd = redis::Cmd::with_capacity(5, 3 + key.len() + value.len() + 22);
                cmd.arg("SET").arg(key).arg(value);
                if let Some(ttl) = ttl {
                    cmd.arg("PX")
                        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
                }
                pipe.add_command(cmd);
            }
        }
    }

    fn finish(self) -> Bulk {
        match self {
            BulkWrite::Plain(cmd) => Bulk::One(cmd),
            BulkWrite::Expiring(pipe) => Bulk::Many(pipe),
        }
    }
}

/// The private CA named by `ca_file`, if any.
fn tls_certificates(
    options: &StoreOptions,
    url: &str,
) -> Result<Option<redis::TlsCertificates>, StoreError> {
    let Some(path) = &options.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| StoreError::InvalidUrl {
        url: redact(url),
        detail: format!("ca_file {}: {e}", path.display()),
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A command or a pipeline, sent the same way on either connection.
trait AsyncQuery: Send {
    fn query<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        self,
        con: &mut C,
    ) -> impl Future<Output = Result<T, RedisError>> + Send;
}

impl AsyncQuery for redis::Cmd {
    async fn query<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        self,
        con: &mut C,
    ) -> Result<T, RedisError> {
        self.query_async(con).await
    }
}

impl AsyncQuery for redis::Pipeline {
    async fn query<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        self,
        con: &mut C,
    ) -> Result<T, RedisError> {
        self.query_async(con).await
    }
}

/// Adds each `(field, n)` of ARGV's pairs to the hash `KEYS[1]` and sets
/// its expiry to ARGV's last value: a slice of activity counts in one
/// call, with one reply, instead of a pipeline of `HINCRBY`s (which costs
/// the client a command built and a reply parsed per entity).
const RECORD_SCRIPT: &str = "for i = 1, #ARGV - 1, 2 do \
redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end \
redis.call('PEXPIRE', KEYS[1], ARGV[#ARGV]) return 0";

/// The `EVAL` of [`RECORD_SCRIPT`] for `counts`. `EVAL` rather than
/// `EVALSHA`: the server hashes the 150-byte script once per call, and no
/// call ever meets a node that has not loaded it.
fn record_script(key: &str, counts: &[(String, u64)], retention_ms: u64) -> redis::Cmd {
    let bytes = counts.iter().map(|(e, _)| e.len() + 24).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(5 + 2 * counts.len(), 256 + key.len() + bytes);
    cmd.arg("EVAL").arg(RECORD_SCRIPT).arg(1).arg(key);
    for (entity, n) in counts {
        cmd.arg(entity.as_str()).arg(*n);
    }
    cmd.arg(retention_ms);
    cmd
}

/// Whether `e` says the server will not run scripts at all (so none of
/// the call ran): an ACL without `@scripting`, or no `EVAL` command.
fn scripts_refused(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::NoPerm) => true,
        ErrorKind::Server(ServerErrorKind::ResponseError) => e
            .detail()
            .is_some_and(|d| d.to_ascii_lowercase().contains("unknown command")),
        _ => false,
    }
}

/// Sorts a client error into the store's error kinds.
fn classify(backend: &'static str, timeout: Duration, e: &RedisError) -> StoreError {
    if e.is_timeout() {
        return StoreError::TimedOut {
            backend,
            after: timeout,
        };
    }
    let down = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                )
        );
    if down {
        StoreError::Unavailable {
            backend,
            detail: e.to_string(),
        }
    } else {
        StoreError::Backend {
            backend,
            detail: e.to_string(),
        }
    }
}

fn decode_all<T>(
    keys: Vec<String>,
    values: Vec<Option<Vec<u8>>>,
    decode: fn(&str, &[u8]) -> Result<T, StoreError>,
) -> Vec<Lookup<T>> {
    keys.into_iter()
        .zip(values)
        .map(|(key, value)| match value {
            Some(bytes) => decode(&key, &bytes),
            None => Err(StoreError::NotFound { key }),
        })
        .collect()
}

/// Fields asked for per `HSCAN` of an activity bucket.
const SCAN_COUNT: usize = 10_000;

#[async_trait]
impl PredictionStore for RedisStore {
    async fn get_predictions(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<PredictionRecord>>, StoreError> {
        let keys: Vec<String> = entities
            .iter()
            .map(|e| self.options.layout.prediction_key(e))
            .collect();
        let values = self.mget(&keys).await?;
        Ok(decode_all(keys, values, decode_prediction))
    }

    async fn put_predictions(&self, entries: &[PredictionEntry]) -> Result<(), StoreError> {
        let items = entries
            .iter()
            .map(|e| {
                (
                    self.options.layout.prediction_key(&e.entity),
                    encode_prediction(&e.record),
                    Some(e.ttl),
                )
            })
            .collect();
        self.set_many(items).await
    }

    async fn put_encoded_predictions(
        &self,
        rows: EncodedRows,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let layout = &self.options.layout;
        self.put_encoded(rows, Some(ttl), |key, entity| {
            key.extend_from_slice(layout.namespace.as_bytes());
            key.extend_from_slice(layout.prediction_prefix.as_bytes());
            key.extend_from_slice(entity.as_bytes());
        })
        .await
    }

    async fn delete_predictions(&self, entities: &[String]) -> Result<(), StoreError> {
        let keys = entities
            .iter()
            .map(|e| self.options.layout.prediction_key(e))
            .collect();
        self.del_many(keys).await
    }

    fn watch_predictions(&self, sink: std::sync::Weak<dyn ChangeSink>) -> bool {
        // A cluster would need a tracking connection per node, and moves of
        // slots followed: not done, so a cluster's records stay to
        // `memory.max_ttl`.
        let Some(client) = &self.tracking else {
            return false;
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        let layout = &self.options.layout;
        let prefix = format!("{}{}", layout.namespace, layout.prediction_prefix);
        crate::tracking::spawn(client.clone(), prefix, self.options.timeout, sink);
        true
    }
}

#[async_trait]
impl FeatureStore for RedisStore {
    async fn get_features(
        &self,
        entities: &[String],
    ) -> Result<Vec<Lookup<FeatureRow>>, StoreError> {
        let keys: Vec<String> = entities
            .iter()
            .map(|e| self.options.layout.feature_key(e))
            .collect();
        let values = self.mget(&keys).await?;
        Ok(decode_all(keys, values, decode_features))
    }

    async fn put_features(
        &self,
        rows: &[(String, FeatureRow)],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let items = rows
            .iter()
            .map(|(e, row)| {
                (
                    self.options.layout.feature_key(e),
                    encode_features(row),
                    ttl,
                )
            })
            .collect();
        self.set_many(items).await
    }

    async fn put_encoded_features(
        &self,
        rows: EncodedRows,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let layout = &self.options.layout;
        self.put_encoded(rows, ttl, |key, entity| {
            key.extend_from_slice(layout.namespace.as_bytes());
            key.extend_from_slice(layout.feature_prefix.as_bytes());
            key.extend_from_slice(entity.as_bytes());
        })
        .await
    }
}

#[async_trait]
impl ActivityLog for RedisStore {
    async fn record_activity_counts(
        &self,
        counts: &[(String, u64)],
        at: SystemTime,
    ) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let key = self
            .options
            .layout
            .activity_key(bucket_of(at, self.options.activity_bucket));
        let retention_ms =
            u64::try_from(self.options.activity_retention.as_millis()).unwrap_or(u64::MAX);
        // Every activity key carries the namespace's hash tag: one slot, so
        // each call is valid on a cluster too.
        if self.scripts.load(Ordering::Relaxed) {
            let mut refused = None;
            for (k, chunk) in counts.chunks(CHUNK).enumerate() {
                match self
                    .query_raw::<()>(record_script(&key, chunk, retention_ms))
                    .await?
                {
                    Ok(()) => {}
                    Err(e) if scripts_refused(&e) => {
                        // Refused before it ran: nothing of this chunk
                        // was counted. It and the rest go as pipelines.
                        refused = Some((k * CHUNK, e));
                        break;
                    }
                    Err(e) => return Err(self.error(e)),
                }
            }
            let Some((done, e)) = refused else {
                return Ok(());
            };
            tracing::warn!(
                "{}: scripts refused ({e}); activity counts go as HINCRBY pipelines",
                self.description
            );
            self.scripts.store(false, Ordering::Relaxed);
            return self
                .record_counts_piped(&key, &counts[done..], retention_ms)
                .await;
        }
        self.record_counts_piped(&key, counts, retention_ms).await
    }

    async fn top_active(
        &self,
        k: usize,
        lookback: Duration,
        now: SystemTime,
    ) -> Result<Vec<ActiveEntity>, StoreError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        // Each bucket's hash is read in slices (HSCAN), so a large bucket
        // never holds Redis for long, and summed here; ranking happens
        // here too, ties by entity id as on every backend.
        let layout = &self.options.layout;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for bucket in buckets_in_window(now, lookback, self.options.activity_bucket) {
            let key = layout.activity_key(bucket);
            // HSCAN may return a field twice (the hash resized between
            // calls): a bucket's fields are collected first, then added.
            let mut fields: HashMap<String, u64> = HashMap::new();
            let mut cursor = 0u64;
            loop {
                let mut cmd = redis::cmd("HSCAN");
                cmd.arg(&key).arg(cursor).arg("COUNT").arg(SCAN_COUNT);
                let (next, slice): (u64, Vec<(String, u64)>) = self.query(cmd).await?;
                fields.extend(slice);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            for (entity, n) in fields {
                *counts.entry(entity).or_default() += n;
            }
        }
        Ok(top_k(counts, k))
    }
}

#[async_trait]
impl Store for RedisStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        self.query::<String>(cmd).await.map(drop)
    }
}

//! Redis client-side caching for the memory tier: a dedicated RESP3
//! connection asks the server to report every write, deletion or expiry of
//! a prediction key (`CLIENT TRACKING ON BCAST PREFIX {namespace}pred:`),
//! and hands the entities to a [`ChangeSink`].
//!
//! The connection is checked with a `PING` every [`CHECK_EVERY`]; when it
//! drops or stops answering the sink is told it lost the reports, and a new
//! connection is tried with a growing pause (up to [`MAX_PAUSE`]). The task
//! ends once the sink is gone.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisError, Value};
use tokio::sync::Notify;

use crate::api::ChangeSink;

/// How often the tracking connection is checked.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between two connection attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Starts reporting changes of keys under `prefix` to `sink`, on a
/// connection of `client` (which speaks RESP3), each round trip bounded by
/// `timeout`.
pub(crate) fn spawn(
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    sink: Weak<dyn ChangeSink>,
) {
    tokio::spawn(run(client, prefix, timeout, sink));
}

async fn run(client: redis::Client, prefix: String, timeout: Duration, sink: Weak<dyn ChangeSink>) {
    let mut pause = Duration::from_millis(100);
    let mut warned = false;
    while sink.strong_count() > 0 {
        let dropped = Arc::new(Dropped::default());
        match connect(&client, &prefix, timeout, &sink, &dropped).await {
            Ok(mut conn) => {
                let Some(s) = sink.upgrade() else { return };
                s.live();
                drop(s);
                tracing::info!(prefix, "the memory tier follows changes in the store");
                warned = false;
                pause = Duration::from_millis(100);
                let why = watch(&mut conn, timeout, &sink, &dropped).await;
                let Some(s) = sink.upgrade() else { return };
                s.lost();
                tracing::warn!(
                    "the memory tier no longer hears of changes in the store ({why}); \
                     records fall back to memory.max_ttl until it reconnects"
                );
            }
            Err(e) if !transient(&e) => {
                // An old server (before 6.0), or ACLs that refuse the
                // command: asking again will not help.
                tracing::warn!(
                    "the store cannot report changes ({e}); memory keeps records for \
                     memory.max_ttl"
                );
                return;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        "the store does not report changes ({e}); memory keeps records \
                         for memory.max_ttl, and tandem tries again"
                    );
                    warned = true;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Whether a failed connection attempt is worth repeating.
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::TryAgain
            )
        )
}

/// Set, and notified, by the connection when it drops.
#[derive(Default)]
struct Dropped {
    flag: AtomicBool,
    notify: Notify,
}

async fn connect(
    client: &redis::Client,
    prefix: &str,
    timeout: Duration,
    sink: &Weak<dyn ChangeSink>,
    dropped: &Arc<Dropped>,
) -> Result<MultiplexedConnection, RedisError> {
    let (sink, dropped, prefix_len) = (sink.clone(), dropped.clone(), prefix.len());
    let on_push = move |info: PushInfo| {
        match info.kind {
            PushKind::Invalidate => {
                if let Some(s) = sink.upgrade() {
                    report(&*s, &info.data, prefix_len);
                }
            }
            PushKind::Disconnection => {
                dropped.flag.store(true, Ordering::SeqCst);
                dropped.notify.notify_one();
            }
            _ => {}
        }
        Ok::<(), redis::aio::SendError>(())
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_push_sender(on_push);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix)
        .exec_async(&mut conn)
        .await?;
    Ok(conn)
}

/// Hands the entities of one `invalidate` message to `sink`: an array of
/// keys, or null when the server was flushed.
fn report(sink: &dyn ChangeSink, data: &[Value], prefix_len: usize) {
    match data.first() {
        Some(Value::Array(keys)) => {
            let entities: Vec<&str> = keys
                .iter()
                .filter_map(|k| match k {
                    Value::BulkString(b) => std::str::from_utf8(b).ok(),
                    _ => None,
                })
                .filter_map(|k| k.get(prefix_len..))
                .collect();
            sink.changed(&entities);
        }
        // A flush, or a message this client does not understand: anything
        // may have changed.
        _ => sink.changed_all(),
    }
}

/// Checks the connection until it drops or stops answering, or the sink
/// goes; says why it stopped.
async fn watch(
    conn: &mut MultiplexedConnection,
    timeout: Duration,
    sink: &Weak<dyn ChangeSink>,
    dropped: &Dropped,
) -> String {
    loop {
        tokio::select! {
            () = dropped.notify.notified() => {}
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if dropped.flag.load(Ordering::SeqCst) {
            return "connection dropped".into();
        }
        if sink.strong_count() == 0 {
            return "memory tier gone".into();
        }
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(timeout, cmd.query_async::<String>(conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return format!("no answer to PING within {timeout:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl ChangeSink for Log {
        fn live(&self) {
            self.0.lock().unwrap().push("live".into());
        }
        fn changed(&self, entities: &[&str]) {
            self.0.lock().unwrap().push(entities.join(","));
        }
        fn changed_all(&self) {
            self.0.lock().unwrap().push("all".into());
        }
        fn lost(&self) {
            self.0.lock().unwrap().push("lost".into());
        }
    }

    #[test]
    fn invalidations_name_entities_and_a_flush_names_all() {
        let log = Log::default();
        let key = |k: &str| Value::BulkString(k.as_bytes().to_vec());
        report(
            &log,
            &[Value::Array(vec![key("ns:pred:a"), key("ns:pred:b")])],
            8,
        );
        report(&log, &[Value::Nil], 8);
        assert_eq!(*log.0.lock().unwrap(), ["a,b", "all"]);
    }
}

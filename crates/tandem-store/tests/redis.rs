//! The shared suite on a real standalone `redis-server`, plus fault tests:
//! the server killed mid-operation, then restarted.

mod suite;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_store::{Store, StoreError};
use tandem_testing::RedisServer;

struct Redis {
    server: RedisServer,
}

impl Redis {
    fn new() -> Self {
        Redis {
            server: RedisServer::start(),
        }
    }
}

impl suite::Harness for Redis {
    fn store(&self) -> Arc<dyn Store> {
        // The suite checks behaviour, not latency: a generous per-call
        // timeout keeps a loaded CI machine from failing it.
        tandem_store::open(&format!("{}?timeout_ms=15000", self.server.url())).unwrap()
    }

    fn plant_raw(&self, store: Arc<dyn Store>, key: &str, bytes: &[u8]) -> Arc<dyn Store> {
        let reply = self
            .server
            .command(&["SET", key, std::str::from_utf8(bytes).unwrap()]);
        assert!(reply.starts_with("+OK"), "{reply}");
        store
    }
}

store_suite!(Redis::new(), "pred:e0", "features:e0");

#[tokio::test]
async fn values_follow_the_reference_layout() {
    let h = Redis::new();
    let store = suite::Harness::store(&h);
    let e = suite::entry(3, Duration::from_secs(86_400));
    store
        .put_predictions(std::slice::from_ref(&e))
        .await
        .unwrap();
    let raw = h.server.command(&["GET", "pred:e3"]);
    assert!(raw.contains(r#"{"prediction":0.003,"timestamp":"#), "{raw}");
    assert!(
        raw.contains(r#""model":"churn","version":2,"source":"realtime""#),
        "{raw}"
    );
    let ttl: i64 = h.server.command(&["TTL", "pred:e3"])[1..]
        .trim()
        .parse()
        .unwrap();
    assert!((86_390..=86_400).contains(&ttl), "TTL {ttl}");
    // A record written by the reference design itself reads back.
    h.server.command(&[
        "SET",
        "pred:legacy",
        r#"{"prediction": 0.7, "timestamp": 1700000000.0}"#,
    ]);
    let got = store.get_predictions(&["legacy".into()]).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().prediction, 0.7);
}

#[tokio::test]
async fn namespaces_share_one_redis_without_collisions() {
    let h = Redis::new();
    let a = tandem_store::open(&format!("{}?namespace=churn:prod:", h.server.url())).unwrap();
    let b = tandem_store::open(&format!("{}?namespace=churn:staging:", h.server.url())).unwrap();
    let mut ea = suite::entry(1, Duration::from_secs(60));
    ea.record.prediction = 1.0;
    let mut eb = suite::entry(1, Duration::from_secs(60));
    eb.record.prediction = 2.0;
    a.put_predictions(&[ea]).await.unwrap();
    b.put_predictions(&[eb]).await.unwrap();
    let got_a = a.get_predictions(&["e1".into()]).await.unwrap();
    let got_b = b.get_predictions(&["e1".into()]).await.unwrap();
    assert_eq!(got_a[0].as_ref().unwrap().prediction, 1.0);
    assert_eq!(got_b[0].as_ref().unwrap().prediction, 2.0);
    assert!(
        h.server
            .command(&["EXISTS", "churn:prod:pred:e1"])
            .starts_with(":1")
    );
    a.record_activity(&["x".into()], std::time::SystemTime::now())
        .await
        .unwrap();
    let top_b = b
        .top_active(5, Duration::from_secs(3600), std::time::SystemTime::now())
        .await
        .unwrap();
    assert!(top_b.is_empty(), "{top_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_gives_unavailable_within_the_timeout_and_recovery_needs_no_restart() {
    let mut h = Redis::new();
    let timeout = Duration::from_millis(500);
    let store = tandem_store::open(&format!("{}?timeout_ms=500", h.server.url())).unwrap();
    store
        .put_predictions(&[suite::entry(1, Duration::from_secs(600))])
        .await
        .unwrap();

    // Kill the server while a large write is in flight.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let entries: Vec<_> = (0..300_000)
                .map(|i| suite::entry(i, Duration::from_secs(600)))
                .collect();
            let started = Instant::now();
            (store.put_predictions(&entries).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    h.server.kill();
    let (result, _) = writer.await.unwrap();
    let err = result.expect_err("a write to a killed server must fail");
    assert!(err.is_transient(), "{err}");

    // While it is down, every call fails fast and says so.
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.get_predictions(&suite::ids(0..10)).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Unavailable { .. } | StoreError::TimedOut { .. }
            ),
            "{err}"
        );
        assert!(
            started.elapsed() < timeout * 3,
            "a call to a dead server took {:?}",
            started.elapsed()
        );
    }
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");

    // Back up: the same store object works again (data is gone: no persistence).
    h.server.restart();
    let mut recovered = None;
    for attempt in 0..20 {
        match store.get_predictions(&suite::ids(0..2)).await {
            Ok(got) => {
                recovered = Some((attempt, got));
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let (attempt, got) = recovered.expect("the store did not recover after the restart");
    assert!(attempt <= 3, "recovered only after {attempt} failed calls");
    assert!(got.iter().all(|g| g.as_ref().unwrap_err().is_not_found()));
    store
        .put_predictions(&[suite::entry(5, Duration::from_secs(60))])
        .await
        .unwrap();
    assert!(store.get_predictions(&["e5".into()]).await.unwrap()[0].is_ok());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // A listener that accepts and never replies stands in for a hung server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let store = tandem_store::open(&format!("redis://127.0.0.1:{port}?timeout_ms=200")).unwrap();
    let started = Instant::now();
    let err = store.get_predictions(&["a".into()]).await.unwrap_err();
    assert!(matches!(err, StoreError::TimedOut { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let store = tandem_store::open(&format!("redis://127.0.0.1:{port}?timeout_ms=300")).unwrap();
    let err = store
        .put_predictions(&[suite::entry(1, Duration::from_secs(1))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let server = RedisServer::start_tls();
    let url = server.tls_url().unwrap();
    let store =
        tandem_store::open(&format!("{url}?ca_file={}", server.ca_file().display())).unwrap();
    store
        .put_predictions(&[suite::entry(1, Duration::from_secs(60))])
        .await
        .unwrap();
    let got = store.get_predictions(&suite::ids(1..2)).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().prediction, 0.001);
    // The plain port sees the same data: it really went to this server.
    assert!(server.command(&["EXISTS", "pred:e1"]).starts_with(":1"));

    // Without the CA the certificate is not trusted, and nothing is written.
    let untrusted = tandem_store::open(&format!("{url}?timeout_ms=2000")).unwrap();
    let err = untrusted
        .put_predictions(&[suite::entry(2, Duration::from_secs(60))])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable { detail, .. } if detail.contains("certificate")),
        "{err}"
    );
    assert!(server.command(&["EXISTS", "pred:e2"]).starts_with(":0"));

    // A CA file that does not exist is a clear configuration error.
    let err = tandem_store::open(&format!("{url}?ca_file=/nonexistent/ca.pem"))
        .err()
        .unwrap();
    assert!(
        matches!(err, StoreError::InvalidUrl { .. }) && err.to_string().contains("ca_file"),
        "{err}"
    );
}

/// `INFO commandstats` line of `command`, if it was called.
fn commandstats(h: &Redis, command: &str) -> Option<String> {
    h.server
        .command(&["INFO", "commandstats"])
        .lines()
        .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
        .map(str::to_owned)
}

/// The number after `field=` in a commandstats line.
fn stat(line: &str, field: &str) -> u64 {
    line.split([':', ','])
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in {line}"))
}

#[tokio::test]
async fn activity_counts_go_as_one_script_call_per_slice() {
    let h = Redis::new();
    let store = suite::Harness::store(&h);
    let now = std::time::SystemTime::now();
    let counts: Vec<(String, u64)> = (0..2500).map(|i| (format!("e{i}"), i % 7 + 1)).collect();
    store.record_activity_counts(&counts, now).await.unwrap();
    // 1000 entities a call: three calls, no HINCRBY sent on its own (the
    // script's own calls are counted under hincrby too, 2500 of them).
    let eval = commandstats(&h, "eval").expect("EVAL was called");
    assert_eq!(stat(&eval, "calls"), 3, "{eval}");
    let hincrby = commandstats(&h, "hincrby").expect("HINCRBY ran");
    assert_eq!(stat(&hincrby, "calls"), 2500, "{hincrby}");
    let top = store
        .top_active(3000, Duration::from_secs(3600), now)
        .await
        .unwrap();
    assert_eq!(top.len(), 2500);
    assert_eq!(
        top.iter().map(|e| e.count).sum::<u64>(),
        counts.iter().map(|c| c.1).sum::<u64>()
    );
    // The bucket expires after the retention (7 days by default).
    let keys = h.server.command(&["KEYS", "{activity}:c:*"]);
    let key = keys
        .lines()
        .find(|l| l.starts_with("{activity}"))
        .unwrap_or_else(|| panic!("{keys}"));
    let ttl: i64 = h.server.command(&["TTL", key])[1..].trim().parse().unwrap();
    assert!((604_790..=604_800).contains(&ttl), "TTL {ttl}");
}

#[tokio::test]
async fn activity_counts_fall_back_to_hincrby_when_scripts_are_refused() {
    let h = Redis::new();
    let reply = h.server.command(&[
        "ACL",
        "SETUSER",
        "noscripts",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-@scripting",
    ]);
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = format!(
        "redis://noscripts:x@127.0.0.1:{}?timeout_ms=15000",
        h.server.port()
    );
    let store = tandem_store::open(&url).unwrap();
    let now = std::time::SystemTime::now();
    let counts: Vec<(String, u64)> = (0..1500).map(|i| (format!("e{i}"), i % 5 + 1)).collect();
    // The first call meets the refusal and counts by HINCRBY; the second
    // goes straight to HINCRBY. Nothing is lost or counted twice.
    store.record_activity_counts(&counts, now).await.unwrap();
    store.record_activity_counts(&counts, now).await.unwrap();
    let eval = commandstats(&h, "eval").expect("EVAL was tried");
    assert_eq!(stat(&eval, "calls"), 0, "{eval}");
    assert_eq!(stat(&eval, "rejected_calls"), 1, "{eval}");
    let top = store
        .top_active(2000, Duration::from_secs(3600), now)
        .await
        .unwrap();
    assert_eq!(top.len(), 1500);
    for e in &top {
        let i: u64 = e.entity[1..].parse().unwrap();
        assert_eq!(e.count, 2 * (i % 5 + 1), "{}", e.entity);
    }
}

/// Polls `check` every 20 ms for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_tier_follows_changes_other_clients_make() {
    use tandem_store::{MemoryTier, MemoryTierConfig, Tier, TierLookup};
    let mut h = Redis::new();
    let store = suite::Harness::store(&h);
    let short = Duration::from_secs(1);
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: short,
        tracked_max_ttl: Duration::from_secs(3600),
    });
    let tiers = tandem_store::TieredPredictions::new(memory.clone(), store.clone());
    assert!(store.watch_predictions(memory.change_sink()));
    eventually(10, "tracking on", || memory.tracking()).await;
    let day = Duration::from_secs(86_400);
    store
        .put_predictions(&[suite::entry(1, day), suite::entry(2, day)])
        .await
        .unwrap();
    // Those writes are reported too; a report that came after the read
    // below would (rightly) drop what it cached.
    eventually(5, "the writes reported", || memory.changes_reported() >= 2).await;
    let ids = suite::ids(1..3);
    let tier_of = |l: &TierLookup| match l {
        TierLookup::Fresh { tier, record } => (*tier, record.prediction),
        other => panic!("{other:?}"),
    };
    let got = tiers.get(&ids, day, std::time::SystemTime::now()).await;
    assert_eq!(tier_of(&got[0]).0, Tier::Store);

    // Past max_ttl, still from memory: nothing changed.
    tokio::time::sleep(short + short / 2).await;
    let got = tiers.get(&ids, day, std::time::SystemTime::now()).await;
    assert_eq!(tier_of(&got[0]), (Tier::Memory, 0.001));
    assert_eq!(tier_of(&got[1]).0, Tier::Memory);

    // Another client rewrites e1 (another process's batch run): memory
    // drops it at once and the next read has the new value.
    let mut newer = suite::entry(1, day);
    newer.record.prediction = 0.5;
    let other = suite::Harness::store(&h);
    other.put_predictions(&[newer]).await.unwrap();
    eventually(5, "e1 dropped from memory", || memory.get("e1").is_none()).await;
    assert!(memory.get("e2").is_some(), "only e1 changed");
    let got = tiers.get(&ids, day, std::time::SystemTime::now()).await;
    assert_eq!(tier_of(&got[0]), (Tier::Store, 0.5));
    // A deletion is a change too.
    other.delete_predictions(&["e2".into()]).await.unwrap();
    eventually(5, "e2 dropped from memory", || memory.get("e2").is_none()).await;

    // The server goes away: no more reports, so records fall back to
    // max_ttl (e1 was cached under a second ago, and expires within one).
    h.server.kill();
    eventually(10, "tracking off", || !memory.tracking()).await;
    eventually(5, "e1 back to max_ttl", || memory.get("e1").is_none()).await;
    // Back: reports resume by themselves.
    h.server.restart();
    eventually(20, "tracking on again", || memory.tracking()).await;
    let reported = memory.changes_reported();
    assert!(reported >= 4, "{reported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_tracking_leaves_records_to_max_ttl() {
    use tandem_store::{MemoryTier, MemoryTierConfig, TieredPredictions};
    let h = Redis::new();
    // A user allowed everything but CLIENT (as some managed services set
    // up their ACLs).
    let reply = h.server.command(&[
        "ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-client",
    ]);
    assert!(reply.starts_with("+OK"), "{reply}");
    let url = h.server.url().replace("redis://", "redis://app:pw@");
    let store = tandem_store::open(&url).unwrap();
    let short = Duration::from_secs(1);
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: short,
        tracked_max_ttl: Duration::from_secs(3600),
    });
    let tiers = TieredPredictions::new(memory.clone(), store.clone());
    assert!(store.watch_predictions(memory.change_sink()));
    let day = Duration::from_secs(86_400);
    store
        .put_predictions(&[suite::entry(1, day)])
        .await
        .unwrap();
    let ids = suite::ids(1..2);
    let got = tiers.get(&ids, day, std::time::SystemTime::now()).await;
    assert!(
        matches!(got[0], tandem_store::TierLookup::Fresh { .. }),
        "{got:?}"
    );
    assert!(memory.get("e1").is_some());
    tokio::time::sleep(short + short / 2).await;
    assert!(!memory.tracking());
    assert!(memory.get("e1").is_none(), "kept past max_ttl untracked");
    // Refused once, not asked again (a retry would have come within
    // 100-800 ms).
    // (The log has an entry per refused command; the client's `CLIENT
    // SETINFO` on connecting is refused too, and has its own.)
    let log = h.server.command(&["ACL", "LOG"]);
    let refusals = log
        .split("count\r\n:")
        .skip(1)
        .find(|entry| entry.contains("client|tracking"))
        .and_then(|entry| entry.split("\r\n").next())
        .unwrap_or_else(|| panic!("no refusal of CLIENT TRACKING logged: {log}"));
    assert_eq!(refusals, "1", "{log}");
    // The store itself works as before.
    let got = tiers.get(&ids, day, std::time::SystemTime::now()).await;
    assert!(
        matches!(got[0], tandem_store::TierLookup::Fresh { .. }),
        "{got:?}"
    );
}

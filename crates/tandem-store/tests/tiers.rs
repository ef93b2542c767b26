//! The memory tier and the tiered reader, in front of a real embedded store
//! (and a Redis that is down).

mod suite;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tandem_core::unix_seconds;
use tandem_store::{
    EmbeddedStore, MemoryTier, MemoryTierConfig, PredictionStore, StoreError, StoreOptions, Tier,
    TierLookup, TieredPredictions,
};

const HOUR: Duration = Duration::from_secs(3600);

fn embedded() -> (tempfile::TempDir, Arc<EmbeddedStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    (dir, Arc::new(store))
}

#[tokio::test]
async fn store_hits_are_promoted_into_memory_and_counted_per_tier() {
    let (_dir, store) = embedded();
    store
        .put_predictions(&[suite::entry(1, HOUR)])
        .await
        .unwrap();
    let tiers = TieredPredictions::new(MemoryTier::new(MemoryTierConfig::default()), store);
    let now = SystemTime::now();
    let ids = suite::ids(0..2);

    let first = tiers.get(&ids, HOUR, now).await;
    assert_eq!(first[0], TierLookup::Miss);
    assert!(
        matches!(&first[1], TierLookup::Fresh { tier: Tier::Store, record } if record.prediction == 0.001)
    );
    let second = tiers.get(&ids, HOUR, now).await;
    assert_eq!(second[0], TierLookup::Miss);
    assert!(matches!(
        &second[1],
        TierLookup::Fresh {
            tier: Tier::Memory,
            ..
        }
    ));

    let c = tiers.counters();
    assert_eq!((c.memory_hits, c.memory_misses, c.memory_stale), (1, 3, 0));
    assert_eq!(
        (c.store_hits, c.store_misses, c.store_stale, c.store_errors),
        (1, 2, 0, 0)
    );
}

#[tokio::test]
async fn an_old_record_is_stale_whichever_tier_holds_it() {
    let (_dir, store) = embedded();
    let mut old = suite::entry(1, HOUR);
    old.record.timestamp = unix_seconds(SystemTime::now()) - 7200.0;
    store
        .put_predictions(std::slice::from_ref(&old))
        .await
        .unwrap();
    let tiers = TieredPredictions::new(MemoryTier::new(MemoryTierConfig::default()), store.clone());
    let ids = suite::ids(1..2);
    let now = SystemTime::now();

    let got = tiers.get(&ids, HOUR, now).await;
    assert!(
        matches!(
            &got[0],
            TierLookup::Stale {
                tier: Tier::Store,
                ..
            }
        ),
        "{got:?}"
    );
    // Now memory holds it too; still stale, and the store is asked for a
    // fresher one.
    let got = tiers.get(&ids, HOUR, now).await;
    assert!(matches!(&got[0], TierLookup::Stale { .. }), "{got:?}");
    assert_eq!(tiers.counters().memory_stale, 1);
    // A looser bound makes the same record fresh, from memory.
    let got = tiers.get(&ids, 3 * HOUR, now).await;
    assert!(
        matches!(
            &got[0],
            TierLookup::Fresh {
                tier: Tier::Memory,
                ..
            }
        ),
        "{got:?}"
    );

    // A fresh record written by someone else reaches this reader once
    // memory's copy is stale.
    let fresh = suite::entry(1, HOUR);
    store
        .put_predictions(std::slice::from_ref(&fresh))
        .await
        .unwrap();
    let got = tiers.get(&ids, HOUR, SystemTime::now()).await;
    assert!(
        matches!(&got[0], TierLookup::Fresh { tier: Tier::Store, record } if record.timestamp == fresh.record.timestamp),
        "{got:?}"
    );
}

#[tokio::test]
async fn writes_go_to_memory_and_the_store() {
    let (_dir, store) = embedded();
    let tiers = TieredPredictions::new(MemoryTier::new(MemoryTierConfig::default()), store.clone());
    tiers.put(&[suite::entry(4, HOUR)]).await.unwrap();
    assert_eq!(tiers.memory().get("e4").unwrap().prediction, 0.004);
    let in_store = store.get_predictions(&suite::ids(4..5)).await.unwrap();
    assert_eq!(in_store[0].as_ref().unwrap().prediction, 0.004);
}

#[tokio::test]
async fn a_store_that_is_down_leaves_memory_answering() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = tandem_store::RedisStore::open(
        &format!("redis://127.0.0.1:{port}"),
        StoreOptions {
            timeout: Duration::from_millis(300),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let memory = MemoryTier::new(MemoryTierConfig::default());
    let mut old = suite::entry(1, HOUR);
    old.record.timestamp -= 7200.0;
    memory.insert("e1", old.record.clone(), HOUR);
    let tiers = TieredPredictions::new(memory, Arc::new(down));
    let got = tiers.get(&suite::ids(0..2), HOUR, SystemTime::now()).await;
    assert!(
        matches!(&got[0], TierLookup::Failed(StoreError::Unavailable { .. })),
        "{got:?}"
    );
    assert!(
        matches!(
            &got[1],
            TierLookup::Stale {
                tier: Tier::Memory,
                ..
            }
        ),
        "{got:?}"
    );
    assert_eq!(tiers.counters().store_errors, 2);
    // A write still reaches memory, and the store's failure is reported.
    let err = tiers.put(&[suite::entry(9, HOUR)]).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(tiers.memory().get("e9").is_some());
}

#[test]
fn memory_is_bounded_by_its_byte_budget() {
    let budget = 2 << 20;
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: budget,
        max_ttl: HOUR,
        ..MemoryTierConfig::default()
    });
    for i in 0..100_000 {
        memory.insert(&format!("entity-{i}"), suite::record(i), HOUR);
    }
    let (entries, bytes) = memory.usage();
    assert!(
        bytes <= budget,
        "{bytes} bytes cached over a budget of {budget}"
    );
    assert!(entries > 1000 && entries < 100_000, "{entries} entries");
}

#[test]
fn memory_entries_expire_with_their_ttl() {
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: HOUR,
        ..MemoryTierConfig::default()
    });
    memory.insert("short", suite::record(1), Duration::from_millis(100));
    memory.insert("long", suite::record(2), HOUR);
    assert!(memory.get("short").is_some());
    std::thread::sleep(Duration::from_millis(200));
    assert!(memory.get("short").is_none());
    assert!(memory.get("long").is_some());
    // max_ttl caps a record's own TTL.
    let capped = MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: Duration::from_millis(100),
        ..MemoryTierConfig::default()
    });
    capped.insert("x", suite::record(3), HOUR);
    std::thread::sleep(Duration::from_millis(200));
    assert!(capped.get("x").is_none());
}

/// One way a record can differ from another.
type Change = fn(&mut tandem_core::PredictionRecord);

#[test]
fn memory_tells_whether_it_holds_the_same_record_made_recently() {
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: HOUR,
        ..MemoryTierConfig::default()
    });
    let second = Duration::from_secs(1);
    // Record 3 has a vector of values, record 1 a single value; both a
    // hex digest, and record 5 one that is not 16 hex digits.
    for i in [1, 3, 5] {
        let mut held = suite::record(i);
        if i == 5 {
            held.digest = Some("not-hex".into());
        }
        memory.insert(&format!("e{i}"), held.clone(), HOUR);
        let mut same = held.clone();
        same.timestamp += 0.5;
        assert!(memory.holds_recent(&format!("e{i}"), &same, second), "{i}");
        assert!(!memory.holds_recent("nobody", &same, second));

        let changes: [(&str, Change); 10] = [
            ("a second later", |r| r.timestamp += 1.0),
            ("earlier", |r| r.timestamp -= 0.5),
            ("value", |r| r.prediction += 1e-12),
            ("model", |r| r.model = "other".into()),
            ("version", |r| r.version += 1),
            ("source", |r| {
                r.source = tandem_core::PredictionSource::Batch
            }),
            ("run", |r| r.run_id = None),
            ("digest", |r| r.digest = Some("00000000000000ff".into())),
            ("no digest", |r| r.digest = None),
            ("values", |r| r.values = Some(vec![0.5])),
        ];
        for (what, change) in changes {
            let mut other = held.clone();
            change(&mut other);
            assert!(
                !memory.holds_recent(&format!("e{i}"), &other, second),
                "record {i}: a different {what} is not the same record"
            );
        }
    }
    // An expired record is not held.
    memory.insert("brief", suite::record(7), Duration::from_millis(50));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!memory.holds_recent("brief", &suite::record(7), second));
}

#[test]
fn a_fresh_record_in_memory_is_taken_without_the_store_and_counted_once() {
    let (_dir, store) = embedded();
    let tiers = TieredPredictions::new(MemoryTier::new(MemoryTierConfig::default()), store);
    let now = SystemTime::now();
    let held = suite::record(3);
    tiers.memory().insert("e3", held.clone(), HOUR);

    // Served: the record as an answer carries it, without digest or run.
    let got = tiers.fresh_in_memory("e3", HOUR, now, |_| true).unwrap();
    assert_eq!(got.prediction.to_bits(), held.prediction.to_bits());
    assert_eq!(got.values, held.values);
    assert_eq!((&*got.model, got.version), (&*held.model, held.version));
    assert_eq!((got.source, got.timestamp), (held.source, held.timestamp));
    assert_eq!((got.digest, got.run_id), (None, None));
    // The full record is still there for those who want it.
    assert_eq!(tiers.memory().get("e3"), Some(held));

    // Not there, too old, or refused by the caller: nothing, nothing counted.
    assert_eq!(tiers.fresh_in_memory("e9", HOUR, now, |_| true), None);
    let later = now + Duration::from_secs(120);
    let minute = Duration::from_secs(60);
    assert_eq!(tiers.fresh_in_memory("e3", minute, later, |_| true), None);
    assert_eq!(tiers.fresh_in_memory("e3", HOUR, now, |_| false), None);
    let c = tiers.counters();
    assert_eq!((c.memory_hits, c.memory_misses, c.memory_stale), (1, 0, 0));
}

/// `max_ttl` of the tiers below: long enough that a loaded machine does
/// not outlast it between two lines of a test.
const SHORT: Duration = Duration::from_secs(1);

/// A tier whose `max_ttl` is short, and whose records read while the store
/// reports changes may stay an hour.
fn tracked_tier() -> MemoryTier {
    MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: SHORT,
        tracked_max_ttl: HOUR,
    })
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn records_read_while_changes_are_reported_stay_until_they_change() {
    let memory = tracked_tier();
    let sink = memory.change_sink().upgrade().unwrap();
    assert!(!memory.tracking());
    // Read before the store reports anything: max_ttl only.
    let before = memory.ticket(&ids(&["early"]));
    memory.insert_read("early", suite::record(0), &before, 0);
    sink.live();
    assert!(memory.tracking());
    let names = ids(&["a", "b", "c"]);
    let ticket = memory.ticket(&names);
    for (i, name) in names.iter().enumerate() {
        memory.insert_read(name, suite::record(i + 1), &ticket, i);
    }
    // Written by this server: max_ttl, and not dropped on a report (the
    // store reports this server's own writes too).
    memory.insert("own", suite::record(9), HOUR);
    sink.changed(&["own"]);
    assert!(memory.get("own").is_some());

    std::thread::sleep(SHORT + SHORT / 2);
    assert!(memory.get("early").is_none(), "read before reporting began");
    assert!(memory.get("own").is_none(), "own writes keep max_ttl");
    for name in &names {
        assert!(memory.get(name).is_some(), "{name} outlived max_ttl");
    }
    // A reported change drops the record at once.
    sink.changed(&["a"]);
    assert!(memory.get("a").is_none());
    assert!(memory.get("b").is_some());
    assert_eq!(memory.changes_reported(), 2);

    // Reporting stops: every record falls back to max_ttl from when it
    // was cached, so b and c (cached longer than max_ttl ago) are gone.
    sink.lost();
    assert!(!memory.tracking());
    assert!(memory.get("b").is_none());
    // ... and stay gone when reporting starts again.
    sink.live();
    assert!(memory.get("c").is_none());
}

#[test]
fn a_change_reported_while_a_read_is_out_keeps_its_record_short() {
    let memory = tracked_tier();
    let sink = memory.change_sink().upgrade().unwrap();
    sink.live();
    // A change reported between the read's start and its insert: the
    // value read may be the old one.
    let t = memory.ticket(&ids(&["d"]));
    sink.changed(&["d"]);
    memory.insert_read("d", suite::record(4), &t, 0);
    // Reporting restarted while a read was out.
    let t = memory.ticket(&ids(&["e"]));
    sink.lost();
    sink.live();
    memory.insert_read("e", suite::record(5), &t, 0);
    // A flush reported while a read was out.
    let t = memory.ticket(&ids(&["f"]));
    sink.changed_all();
    memory.insert_read("f", suite::record(6), &t, 0);
    // Nothing reported: kept.
    let t = memory.ticket(&ids(&["g"]));
    memory.insert_read("g", suite::record(7), &t, 0);
    for name in ["d", "e", "f", "g"] {
        assert!(memory.get(name).is_some(), "{name}");
    }
    std::thread::sleep(SHORT + SHORT / 2);
    for name in ["d", "e", "f"] {
        assert!(memory.get(name).is_none(), "{name} kept past max_ttl");
    }
    assert!(memory.get("g").is_some());
    // A flush ends the epoch: g falls back to max_ttl too.
    sink.changed_all();
    assert!(memory.get("g").is_none());
}

#[test]
fn without_a_tracked_ttl_above_max_ttl_reads_keep_max_ttl() {
    let memory = MemoryTier::new(MemoryTierConfig {
        max_bytes: 1 << 20,
        max_ttl: SHORT,
        tracked_max_ttl: Duration::ZERO,
    });
    let sink = memory.change_sink().upgrade().unwrap();
    sink.live();
    let t = memory.ticket(&ids(&["a"]));
    memory.insert_read("a", suite::record(1), &t, 0);
    std::thread::sleep(SHORT + SHORT / 2);
    assert!(memory.get("a").is_none());
}

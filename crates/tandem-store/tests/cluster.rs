//! The shared suite on a real 3-node Redis Cluster started by the test.

mod suite;

use std::sync::Arc;

use tandem_store::Store;
use tandem_testing::RedisCluster;

struct Cluster {
    cluster: RedisCluster,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            cluster: RedisCluster::start(3),
        }
    }
}

impl suite::Harness for Cluster {
    fn store(&self) -> Arc<dyn Store> {
        // The suite checks behaviour, not latency: a generous per-call
        // timeout keeps a loaded CI machine from failing it.
        tandem_store::open(&format!("{}?timeout_ms=15000", self.cluster.url())).unwrap()
    }

    fn plant_raw(&self, store: Arc<dyn Store>, key: &str, bytes: &[u8]) -> Arc<dyn Store> {
        // Only the node that owns the key's slot accepts it; the others
        // answer -MOVED.
        let value = std::str::from_utf8(bytes).unwrap();
        let owner = self
            .cluster
            .nodes()
            .iter()
            .find(|n| n.command(&["SET", key, value]).starts_with("+OK"));
        assert!(owner.is_some(), "no node accepted {key}");
        store
    }
}

store_suite!(Cluster::new(), "pred:e0", "features:e0");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_every_node() {
    let h = Cluster::new();
    let store = suite::Harness::store(&h);
    let entries: Vec<_> = (0..3000)
        .map(|i| suite::entry(i, std::time::Duration::from_secs(600)))
        .collect();
    store.put_predictions(&entries).await.unwrap();
    for node in h.cluster.nodes() {
        let reply = node.command(&["DBSIZE"]);
        let n: u64 = reply[1..].trim().parse().unwrap();
        assert!(n > 500, "node {} holds only {n} keys", node.port());
    }
}

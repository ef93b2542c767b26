//! Helpers for the `tandem serve` tests: start the real binary on a free
//! port, talk HTTP to it, lay out model repositories and feature data.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_core::FeatureBatch;
use tandem_model::Model;

pub const WIDTH: usize = 8;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name)
        .join("1")
}

/// Copies fixture `from` (its `model.onnx` and `model.toml`) to
/// `<repo>/<name>/<version>/`, through a temporary directory and a rename
/// so that a polling server never sees half a version.
pub fn add_version(repo: &Path, name: &str, version: u64, from: &str) {
    let dir = repo.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!(".incoming-{version}"));
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["model.onnx", "model.toml"] {
        std::fs::copy(fixture(from).join(f), tmp.join(f)).unwrap();
    }
    std::fs::rename(&tmp, dir.join(version.to_string())).unwrap();
}

/// Deterministic feature `f` of entity `i`.
pub fn value(i: usize, f: usize) -> f64 {
    (((i * 7919 + f * 104_729) % 1000) as f64 / 100.0) - 5.0
}

pub fn features(i: usize) -> Vec<f32> {
    (0..WIDTH).map(|f| value(i, f) as f32).collect()
}

/// A CSV of entities `e{i}` for `ids` with features f0..f7.
pub fn write_csv(path: &Path, ids: impl IntoIterator<Item = usize>) {
    let mut s = String::from("entity_id");
    for f in 0..WIDTH {
        s.push_str(&format!(",f{f}"));
    }
    s.push('\n');
    for i in ids {
        s.push_str(&format!("e{i}"));
        for f in 0..WIDTH {
            s.push_str(&format!(",{}", value(i, f)));
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// What `model` predicts for `rows`, as the f64 the server reports.
pub fn predict(model: &Model, rows: &[Vec<f32>]) -> Vec<f64> {
    let batch = FeatureBatch::from_rows(rows).unwrap();
    let p = model.predict(&batch).unwrap();
    (0..p.rows()).map(|i| f64::from(p.row(i)[0])).collect()
}

pub fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem")
}

/// Runs `tandem` and fails the test with its output unless it exits 0.
pub fn tandem_ok(args: &[&str]) {
    let out = tandem(args);
    assert!(
        out.status.success(),
        "tandem {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `tandem serve`.
pub struct Serve {
    child: Child,
    pub base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// An HTTP answer: status, body text, `Retry-After` header.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    pub header_len: Option<String>,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Serve {
    /// Starts `tandem serve ARGS --listen 127.0.0.1:0` with extra
    /// environment, and waits until it listens.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serve.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
        cmd.arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("TANDEM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tandem serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "tandem serve did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let base = line
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        Serve {
            child,
            base,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        let mut req = agent.request(method, &format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let res = match body {
            Some(b) => req.send_bytes(b),
            None => req.call(),
        };
        let resp = match res {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log()),
        };
        let status = resp.status();
        let retry_after = resp.header("retry-after").map(str::to_string);
        let content_type = resp.header("content-type").map(str::to_string);
        let header_len = resp
            .header("inference-header-content-length")
            .map(str::to_string);
        let mut bytes = vec![];
        resp.into_reader().read_to_end(&mut bytes).unwrap();
        Reply {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            retry_after,
            content_type,
            header_len,
            bytes,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None, &[])
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.request(
            "POST",
            path,
            Some(body.as_bytes()),
            &[("content-type", "application/json")],
        )
    }

    /// GET that must answer 200 with JSON.
    pub fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    /// Waits until `check` holds, polling for up to `secs` seconds.
    pub fn wait_for(&self, secs: u64, what: &str, mut check: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}\n{}", self.log());
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > until {
                let _ = self.child.kill();
                panic!("tandem serve did not stop on SIGTERM\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary model repository with `churn` version 1 (the XGBoost
/// regressor fixture, 8 features named f0..f7).
pub fn churn_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    add_version(&repo, "churn", 1, "xgboost_regressor");
    repo
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

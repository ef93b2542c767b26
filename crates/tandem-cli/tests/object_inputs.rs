//! Inputs in object stores, through the real binary: `tandem batch`,
//! `tandem materialize` and `tandem refresh` reading `s3://` URLs from an
//! S3-compatible server (moto's server mode, started here on a free port;
//! objects uploaded with boto3, an independent client) and `http://` URLs
//! from a real Apache httpd (files by ranged GET, directories listed by
//! WebDAV PROPFIND),
//! checked record by record against the same job on the local copy.
//!
//! Needs the Python of `TANDEM_PYTHON` with `moto[server]`, and apache2; `.ci/run` installs both and sets
//! `TANDEM_REQUIRE_OBJECT_STORES=1`, which turns a skip into a failure.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use tandem_testing::free_port;

const WIDTH: usize = 8;

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/xgboost_regressor/1/model.onnx")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn required() -> bool {
    std::env::var_os("TANDEM_REQUIRE_OBJECT_STORES").is_some()
}

fn value(i: usize, f: usize) -> f64 {
    (((i * 7919 + f * 104_729) % 1000) as f64 / 100.0) - 5.0
}

fn write_parquet(path: &Path, rows: std::ops::Range<usize>) {
    let mut fields = vec![Field::new("entity_id", DataType::Utf8, false)];
    fields.extend((0..WIDTH).map(|f| Field::new(format!("f{f}"), DataType::Float64, false)));
    let schema = Arc::new(Schema::new(fields));
    let ids: Vec<usize> = rows.collect();
    let mut cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
        ids.iter().map(|i| format!("e{i}")),
    ))];
    for f in 0..WIDTH {
        cols.push(Arc::new(Float64Array::from_iter_values(
            ids.iter().map(|&i| value(i, f)),
        )));
    }
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
    writer
        .write(&RecordBatch::try_new(schema, cols).unwrap())
        .unwrap();
    writer.close().unwrap();
}

/// Two Parquet parts (e0..e1500, e1500..e3000) in `dir/day=1/`.
fn write_parts(dir: &Path) -> PathBuf {
    let day = dir.join("day=1");
    std::fs::create_dir_all(&day).unwrap();
    write_parquet(&day.join("part-0.parquet"), 0..1500);
    write_parquet(&day.join("part-1.parquet"), 1500..3000);
    day
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python_with_moto() -> Option<String> {
    let candidates = [
        std::env::var("TANDEM_PYTHON").ok(),
        Some("python3".to_owned()),
    ];
    for py in candidates.into_iter().flatten() {
        let ok = Command::new(&py)
            .args(["-c", "import moto.server, boto3"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    assert!(
        !required(),
        "TANDEM_REQUIRE_OBJECT_STORES is set but no Python has moto[server]"
    );
    None
}

/// An S3-compatible server on a free port, with the files of `local`
/// uploaded under `s3://features/<name>` by boto3.
fn start_s3(py: &str, local: &Path) -> (Server, u16) {
    let port = free_port();
    let mut child = Command::new(py)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto server");
    wait_for_port(port, &mut child, "moto server");
    let upload = r#"
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="tandem", aws_secret_access_key="tandem")
s3.create_bucket(Bucket="features")
root = sys.argv[2]
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, "features", os.path.relpath(p, os.path.dirname(root)))
"#;
    let out = Command::new(py)
        .args(["-c", upload, &format!("http://127.0.0.1:{port}")])
        .arg(local)
        .output()
        .unwrap();
    assert!(out.status.success(), "upload: {}", text(&out.stderr));
    (Server(child), port)
}

/// Downloads `s3://features/<key>` with boto3.
fn download(py: &str, port: u16, key: &str, to: &Path) {
    let script = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="tandem", aws_secret_access_key="tandem")
s3.download_file("features", sys.argv[2], sys.argv[3])
"#;
    let out = Command::new(py)
        .args(["-c", script, &format!("http://127.0.0.1:{port}"), key])
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "download: {}", text(&out.stderr));
}

fn tandem_s3(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "tandem")
        .env("AWS_SECRET_ACCESS_KEY", "tandem")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run tandem")
}

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .expect("run tandem")
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {}", text(&out.stdout)))
}

/// Every prediction of `store` for e0..e{n}.
async fn predictions(store: &str, n: usize) -> HashMap<String, f64> {
    let st = tandem_store::open(store).unwrap();
    let ids: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
    let got = st.get_predictions(&ids).await.unwrap();
    ids.into_iter()
        .zip(got)
        .filter_map(|(id, r)| r.ok().map(|r| (id, r.prediction)))
        .collect()
}

fn batch_args<'a>(input: &'a str, store: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "batch", "--model", model, "--input", input, "--store", store, "--json",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_materialize_and_refresh_read_s3_urls() {
    let Some(py) = python_with_moto() else {
        eprintln!("skipped: pip install 'moto[server]' (TANDEM_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let day = write_parts(dir.path());
    let (_s3, port) = start_s3(&py, &day);
    let model = model_path();
    let model = model.to_str().unwrap();

    // The local run is the reference.
    let local_store = dir.path().join("local.redb").display().to_string();
    let s = summary(&tandem(&batch_args(
        day.to_str().unwrap(),
        &local_store,
        model,
    )));
    assert_eq!(s["rows_written"], 3000);
    let want = predictions(&local_store, 3000).await;
    assert_eq!(want.len(), 3000);

    // A prefix (with and without its slash), a glob, and one object.
    let cases = [
        ("s3://features/day=1/", 3000),
        ("s3://features/day=1", 3000),
        ("s3://features/day=1/part-*.parquet", 3000),
        ("s3://features/day=1/part-1.parquet", 1500),
    ];
    for (k, (url, rows)) in cases.into_iter().enumerate() {
        let store = dir
            .path()
            .join(format!("s3-{k}.redb"))
            .display()
            .to_string();
        let s = summary(&tandem_s3(port, &batch_args(url, &store, model)));
        assert_eq!(s["rows_read"], rows, "{url}");
        assert_eq!(s["rows_written"], rows, "{url}");
        assert_eq!(s["input"], url);
        let got = predictions(&store, 3000).await;
        assert_eq!(got.len(), rows, "{url}");
        for (id, p) in &got {
            assert_eq!(*p, want[id], "{url}: {id}");
        }
    }

    // --output to an object: uploaded whole when the run succeeds, and
    // read back (downloaded with boto3) with the local run's predictions.
    let store = dir.path().join("s3-out.redb").display().to_string();
    let mut args = batch_args("s3://features/day=1/", &store, model);
    args.extend(["--output", "s3://features/out/predictions.parquet"]);
    let s = summary(&tandem_s3(port, &args));
    assert_eq!(s["output"], "s3://features/out/predictions.parquet");
    let local = dir.path().join("downloaded.parquet");
    download(&py, port, "out/predictions.parquet", &local);
    let ctx = datafusion::prelude::SessionContext::new();
    let batches = ctx
        .read_parquet(local.to_str().unwrap(), Default::default())
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut seen = 0;
    for b in &batches {
        let ids = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let preds = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        for r in 0..b.num_rows() {
            assert_eq!(preds.value(r), want[ids.value(r)], "{}", ids.value(r));
            seen += 1;
        }
    }
    assert_eq!(seen, 3000);
    // A bucket that does not exist fails the run before it scores.
    let mut args = batch_args("s3://features/day=1/", &store, model);
    args.extend(["--output", "s3://no-such-bucket/predictions.parquet"]);
    let out = tandem_s3(port, &args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-bucket"), "{err}");

    // materialize reads the same URL into the feature store.
    let features = dir.path().join("features.redb").display().to_string();
    let out = tandem_s3(
        port,
        &[
            "materialize",
            "--input",
            "s3://features/day=1/",
            "--store",
            &features,
            "--model",
            model,
            "--json",
        ],
    );
    assert_eq!(summary(&out)["rows_written"], 3000);
    let st = tandem_store::open(&features).unwrap();
    let got = st.get_features(&["e2999".into()]).await.unwrap();
    assert_eq!(got[0].as_ref().unwrap().get("f3"), Some(value(2999, 3)));

    // refresh against the local run's records: same features, nothing to do.
    let out = tandem_s3(
        port,
        &[
            "refresh",
            "--model",
            model,
            "--input",
            "s3://features/day=1/",
            "--store",
            &local_store,
            "--changed-threshold",
            "0.001",
            "--json",
        ],
    );
    let s = summary(&out);
    assert_eq!(s["checked"], 3000);
    assert_eq!(s["rescored"], 0);

    // Missing objects, buckets and credentials fail before anything is
    // written, naming the URL, with exit code 2.
    for (url, needle) in [
        ("s3://features/day=2/", "s3://features/day=2/"),
        ("s3://features/day=1/nope.parquet", "nope.parquet"),
        ("s3://no-such-bucket/x.parquet", "no-such-bucket"),
    ] {
        let store = dir.path().join("never.redb");
        let out = tandem_s3(port, &batch_args(url, store.to_str().unwrap(), model));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {err}");
        assert!(err.contains(needle), "{url}: {err}");
        assert!(!store.exists(), "{url}: a store was created");
    }
}

/// Apache httpd (single process, `-X`) serving `root` with WebDAV, so that
/// a directory can be listed (`PROPFIND`, `Depth: infinity`).
fn start_apache(root: &Path) -> Option<(Server, u16)> {
    let modules = Path::new("/usr/lib/apache2/modules");
    let httpd = Command::new("apache2").arg("-v").output();
    if httpd.is_err() || !modules.join("mod_dav_fs.so").exists() {
        assert!(
            !required(),
            "TANDEM_REQUIRE_OBJECT_STORES is set but apache2 (with mod_dav_fs) is missing"
        );
        return None;
    }
    let port = free_port();
    let prefix = tempfile::tempdir().unwrap().keep();
    let conf = format!(
        r#"ServerRoot {prefix}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule dav_module {modules}/mod_dav.so
LoadModule dav_fs_module {modules}/mod_dav_fs.so
Listen 127.0.0.1:{port}
ServerName localhost
PidFile {prefix}/httpd.pid
ErrorLog {prefix}/error.log
DavLockDB {prefix}/davlock
DocumentRoot {root}
<Directory {root}>
  Dav On
  DavDepthInfinity On
  Require all granted
</Directory>
"#,
        modules = modules.display(),
        prefix = prefix.display(),
        root = root.display(),
    );
    let conf_path = prefix.join("httpd.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = Command::new("apache2")
        .arg("-X")
        .arg("-f")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start apache2");
    wait_for_port(port, &mut child, "apache2");
    Some((Server(child), port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_http_urls_from_a_web_server() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    write_parts(&www);
    let Some((_httpd, port)) = start_apache(&www) else {
        eprintln!("skipped: apt-get install apache2");
        return;
    };
    let model = model_path();
    let model = model.to_str().unwrap();
    let local_store = dir.path().join("local.redb").display().to_string();
    let day = www.join("day=1");
    summary(&tandem(&batch_args(
        day.to_str().unwrap(),
        &local_store,
        model,
    )));
    let want = predictions(&local_store, 3000).await;

    let base = format!("http://127.0.0.1:{port}");
    let cases = [
        (format!("{base}/day=1/part-0.parquet"), 1500),
        (format!("{base}/day=1/"), 3000),
    ];
    for (k, (url, rows)) in cases.iter().enumerate() {
        let store = dir
            .path()
            .join(format!("http-{k}.redb"))
            .display()
            .to_string();
        let s = summary(&tandem(&batch_args(url, &store, model)));
        assert_eq!(s["rows_written"], *rows, "{url}");
        let got = predictions(&store, 3000).await;
        assert_eq!(got.len(), *rows, "{url}");
        for (id, p) in &got {
            assert_eq!(*p, want[id], "{url}: {id}");
        }
    }
    // A glob, listed over WebDAV, on an in-process Ballista cluster (the
    // scheduler and executor resolve the URL with their own registry).
    let store = dir.path().join("cluster.redb").display().to_string();
    let url = format!("{base}/day=*/part-*.parquet");
    let mut args = batch_args(&url, &store, model);
    args.extend(["--cluster", "standalone", "--partitions", "2"]);
    let s = summary(&tandem(&args));
    assert_eq!(s["rows_written"], 3000);
    let got = predictions(&store, 3000).await;
    assert_eq!(got.len(), 3000);
    for (id, p) in &got {
        assert_eq!(*p, want[id], "cluster {url}: {id}");
    }

    let out = tandem(&batch_args(
        &format!("{base}/day=1/missing.parquet"),
        dir.path().join("never.redb").to_str().unwrap(),
        model,
    ));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.parquet"), "{err}");
}

//! Test support: real `redis-server` processes on free loopback ports, in
//! temporary directories, killed on drop; and 3-node Redis Clusters built
//! from them. Tests never touch a Redis they did not start.
//!
//! These helpers panic with a message saying what to install or what went
//! wrong: they run only inside tests.

#![expect(clippy::panic, reason = "test support: a failed set-up fails the test")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A `redis-server` process started by a test.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a standalone server on a free loopback port and waits until
    /// it answers `PING`.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments
    /// (`["--cluster-enabled", "yes"]`, say).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("tandem-redis-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir for redis-server: {e}"));
        let mut server = RedisServer {
            child: None,
            port: free_port_pair(),
            tls_port: None,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.spawn();
        server
    }

    /// Starts a server that also listens for TLS, with a certificate for
    /// `127.0.0.1` signed by a CA made for it (`openssl` CLI); see
    /// [`tls_url`](Self::tls_url) and [`ca_file`](Self::ca_file).
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("tandem-redis-tls-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir for redis-server: {e}"));
        make_certificates(dir.path());
        let tls_port = free_port_pair();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let extra = vec![
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            file("server.pem"),
            "--tls-key-file".to_owned(),
            file("server.key"),
            "--tls-ca-cert-file".to_owned(),
            file("ca.pem"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let mut server = RedisServer {
            child: None,
            port: free_port_pair(),
            tls_port: Some(tls_port),
            dir,
            extra,
        };
        server.spawn();
        server
    }

    /// `rediss://127.0.0.1:TLS_PORT` (servers from [`start_tls`](Self::start_tls)).
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}"))
    }

    /// The PEM file of the CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it: apt-get install redis-server")
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if command(self.port, &["PING"]).is_ok_and(|r| r.starts_with("+PONG")) {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "redis-server on port {} exited with {status}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer within 15 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)).
    /// Data is not kept: persistence is off.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends one command and returns the raw RESP reply.
    pub fn command(&self, args: &[&str]) -> String {
        command(self.port, args).unwrap_or_else(|e| panic!("redis command {args:?}: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of started `redis-server` processes, every slot assigned,
/// no replicas.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) cluster-enabled servers, joins them with
    /// `redis-cli --cluster create`, and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(n: usize) -> RedisCluster {
        assert!(n >= 3, "a Redis Cluster needs at least 3 masters");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new(redis_cli_binary())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); install redis-tools"));
        if !out.status.success() {
            panic!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|n| {
                command(n.port, &["CLUSTER", "INFO"]).is_ok_and(|r| r.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            if Instant::now() > deadline {
                panic!("Redis Cluster did not reach cluster_state:ok within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cluster://127.0.0.1:P1,127.0.0.1:P2,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run openssl ({e}); install it: apt-get install openssl")
            });
        if !out.status.success() {
            panic!(
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tandem test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n")
        .unwrap_or_else(|e| panic!("writing ext.cnf: {e}"));
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("TANDEM_REDIS_SERVER").map_or_else(|| "redis-server".into(), PathBuf::from)
}

fn redis_cli_binary() -> PathBuf {
    std::env::var_os("TANDEM_REDIS_CLI").map_or_else(|| "redis-cli".into(), PathBuf::from)
}

/// Sends one command as a RESP array and reads one reply (raw text).
fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if reply_complete(&out) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Whether `buf` holds one whole simple reply (status, error, integer, or
/// bulk string), which is all the helpers send for.
fn reply_complete(buf: &[u8]) -> bool {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match buf[0] {
        b'$' => {
            let len: i64 = std::str::from_utf8(&buf[1..line_end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            len < 0 || buf.len() >= line_end + 2 + usize::try_from(len).unwrap_or(0) + 2
        }
        _ => true,
    }
}

/// A loopback port that is free, and whose cluster bus port (+10000) is
/// free too.
fn free_port_pair() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = u16::try_from(std::process::id() % 20_000).unwrap_or(0);
    for _ in 0..2000 {
        let offset = NEXT.fetch_add(7, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(offset) % 25_000);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free loopback port pair found");
}

/// A free loopback port (asked of the OS; free when returned).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Writes a well-formed ONNX file, of one input `x` of `[N, width]`
/// floats, whose graph makes tract panic while it prepares it: a
/// `Transpose` whose permutation names an axis the input does not have
/// (tract indexes its axes with it). For the tests of load errors.
pub fn write_panicking_onnx(path: &Path, width: usize) {
    use tract_onnx::pb::{AttributeProto, NodeProto};
    let transpose = NodeProto {
        op_type: "Transpose".into(),
        name: "transpose".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec![AttributeProto {
            name: "perm".into(),
            r#type: 7, // INTS
            ints: vec![5, 0],
            ..Default::default()
        }],
        ..Default::default()
    };
    write_graph_onnx(path, width, "panics", vec![transpose], Vec::new());
}

/// Writes a well-formed ONNX file, of one input `x` of `[N, width]`
/// floats, that loads and scores rows whose values are whole numbers from
/// 0 to 3 (each value becomes `10 * (value + 1)`), and makes tract panic
/// while scoring a row with any other value: the values index a table of 4
/// (`Cast` to INT64, then `Gather`), and tract's `Gather` indexes its data
/// with them unchecked. For the tests of errors while scoring.
pub fn write_scoring_panic_onnx(path: &Path, width: usize) {
    use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};
    let cast = NodeProto {
        op_type: "Cast".into(),
        name: "cast".into(),
        input: vec!["x".into()],
        output: vec!["i".into()],
        attribute: vec![AttributeProto {
            name: "to".into(),
            r#type: 2, // INT
            i: 7,      // INT64
            ..Default::default()
        }],
        ..Default::default()
    };
    let gather = NodeProto {
        op_type: "Gather".into(),
        name: "gather".into(),
        input: vec!["table".into(), "i".into()],
        output: vec!["y".into()],
        attribute: vec![AttributeProto {
            name: "axis".into(),
            r#type: 2, // INT
            i: 0,
            ..Default::default()
        }],
        ..Default::default()
    };
    let table = TensorProto {
        name: "table".into(),
        dims: vec![4],
        data_type: 1, // FLOAT
        float_data: vec![10.0, 20.0, 30.0, 40.0],
        ..Default::default()
    };
    write_graph_onnx(path, width, "lookup", vec![cast, gather], vec![table]);
}

/// Writes an ONNX model of `nodes` (opset 13) from one input `x` of
/// `[N, width]` floats to one output `y`.
fn write_graph_onnx(
    path: &Path,
    width: usize,
    name: &str,
    nodes: Vec<tract_onnx::pb::NodeProto>,
    initializer: Vec<tract_onnx::pb::TensorProto>,
) {
    use prost::Message;
    use tensor_shape_proto::dimension::Value as Dim;
    use tract_onnx::pb::{
        GraphProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
        tensor_shape_proto, type_proto,
    };
    let dim = |d: Dim| tensor_shape_proto::Dimension {
        value: Some(d),
        ..Default::default()
    };
    let input = ValueInfoProto {
        name: "x".into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1, // FLOAT
                shape: Some(TensorShapeProto {
                    dim: vec![
                        dim(Dim::DimParam("N".into())),
                        dim(Dim::DimValue(width as i64)),
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "tandem-testing".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            name: name.into(),
            node: nodes,
            initializer,
            input: vec![input],
            output: vec![ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    std::fs::write(path, model.encode_to_vec()).unwrap();
}

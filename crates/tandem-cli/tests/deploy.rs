//! The Kubernetes manifests in `deploy/k8s/`: every resource validates
//! against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: no
//! unknown fields), and every tandem container's arguments are accepted by
//! the real binary, so a renamed flag breaks this test rather than a
//! rollout.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/k8s")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "manifests: {files:?}");
    files
}

/// The Python with kubernetes-validate (and PyYAML), if there is one.
fn python() -> Option<String> {
    let candidates = [
        std::env::var("TANDEM_PYTHON").ok(),
        Some("python3".to_owned()),
    ];
    for py in candidates.into_iter().flatten() {
        let ok = Command::new(&py)
            .args(["-c", "import kubernetes_validate, yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    assert!(
        std::env::var_os("TANDEM_REQUIRE_KUBE_VALIDATE").is_none(),
        "TANDEM_REQUIRE_KUBE_VALIDATE is set but no Python has kubernetes-validate"
    );
    None
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let Some(py) = python() else {
        eprintln!("skipped: pip install kubernetes-validate (TANDEM_PYTHON)");
        return;
    };
    let out = Command::new(&py)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The validator must be able to fail: a misspelt field is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(k8s_dir().join("serve.yaml"))
        .unwrap()
        .replacen("replicas: 2", "replicaz: 2", 1);
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(&py)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed");
}

/// Every container of every manifest, as (file, pod spec container).
fn containers(py: &str) -> Vec<(String, Value)> {
    let script = "import json, sys, yaml\n\
                  docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
                  print(json.dumps([[d['metadata']['name'], d] for d in docs]))";
    let out = Command::new(py)
        .args(["-c", script])
        .args(manifests())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<(String, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    let mut found = vec![];
    for (name, doc) in docs {
        let spec = match doc["kind"].as_str() {
            Some("Deployment" | "Job") => &doc["spec"]["template"]["spec"],
            Some("CronJob") => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        for c in spec["containers"].as_array().unwrap() {
            found.push((name.clone(), c.clone()));
        }
    }
    found
}

#[test]
fn every_container_runs_a_tandem_command_the_binary_accepts() {
    let Some(py) = python() else {
        eprintln!("skipped: pip install kubernetes-validate (TANDEM_PYTHON)");
        return;
    };
    let all = containers(&py);
    let commands: Vec<String> = all
        .iter()
        .map(|(_, c)| c["args"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    for want in ["serve", "batch", "scheduler", "executor"] {
        assert!(
            commands.iter().any(|c| c == want),
            "no {want} in {commands:?}"
        );
    }
    for (name, c) in &all {
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                // Kubernetes expands $(VAR) from the container's env.
                a.as_str()
                    .unwrap()
                    .replace("$(SHARD)", "3")
                    .replace("$(POD_IP)", "10.0.0.7")
            })
            .collect();
        // Flags are parsed in order and --help comes last: an unknown or
        // malformed flag fails before the help is printed.
        let out = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: tandem {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        // Probes point at tandem's health routes.
        if args[0] == "serve" {
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
        }
    }
}

//! The TensorFlow Serving repository layout: versions, policies, labels,
//! reloads.

mod common;

use std::collections::BTreeSet;

use common::install;
use tandem_model::{ModelError, ModelRepository, VersionPolicy, VersionSpec};

#[test]
fn latest_policy_serves_the_newest_version_and_ignores_other_dirs() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "xgboost_regressor", "eta", 1);
    install(dir.path(), "lightgbm_regressor", "eta", 3);
    std::fs::create_dir_all(dir.path().join("eta/tmp-upload")).unwrap();
    let repo = ModelRepository::open(dir.path(), VersionPolicy::default()).unwrap();
    assert_eq!(repo.model_names(), vec!["eta"]);
    let m = repo.get("eta", &VersionSpec::Latest).unwrap();
    assert_eq!((m.name(), m.version()), ("eta", 3));
    let err = repo.get("eta", &VersionSpec::Number(1)).unwrap_err();
    assert!(
        matches!(err, ModelError::UnknownVersion { version: 1, .. }),
        "{err}"
    );
}

#[test]
fn all_and_specific_policies() {
    let dir = tempfile::tempdir().unwrap();
    for v in [1, 2, 5] {
        install(dir.path(), "xgboost_regressor", "eta", v);
    }
    let all = ModelRepository::open(dir.path(), VersionPolicy::All).unwrap();
    assert_eq!(
        all.served("eta")
            .unwrap()
            .versions
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![1, 2, 5]
    );
    let some =
        ModelRepository::open(dir.path(), VersionPolicy::Specific(BTreeSet::from([2]))).unwrap();
    assert_eq!(
        some.served("eta")
            .unwrap()
            .versions
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert!(matches!(
        some.get("nope", &VersionSpec::Latest),
        Err(ModelError::UnknownModel(_))
    ));
}

#[test]
fn labels_resolve_and_must_point_at_loaded_versions() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "xgboost_regressor", "eta", 1);
    install(dir.path(), "xgboost_regressor", "eta", 2);
    std::fs::write(
        dir.path().join("eta/labels.toml"),
        "stable = 1\ncanary = 2\n",
    )
    .unwrap();
    let repo = ModelRepository::open(dir.path(), VersionPolicy::All).unwrap();
    assert_eq!(
        repo.get("eta", &VersionSpec::Label("stable".into()))
            .unwrap()
            .version(),
        1
    );
    assert_eq!(
        repo.get("eta", &VersionSpec::Label("canary".into()))
            .unwrap()
            .version(),
        2
    );
    assert!(matches!(
        repo.get("eta", &VersionSpec::Label("beta".into())),
        Err(ModelError::UnknownLabel { .. })
    ));

    std::fs::write(dir.path().join("eta/labels.toml"), "stable = 7\n").unwrap();
    let err = ModelRepository::open(dir.path(), VersionPolicy::All).unwrap_err();
    assert!(
        err.to_string().contains("version 7, which is not loaded"),
        "{err}"
    );
    std::fs::write(dir.path().join("eta/labels.toml"), "\"bad-label\" = 1\n").unwrap();
    let err = ModelRepository::open(dir.path(), VersionPolicy::All).unwrap_err();
    assert!(err.to_string().contains("[a-zA-Z0-9_]+"), "{err}");
}

#[test]
fn reload_adds_new_versions_first_and_keeps_state_when_a_version_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), "xgboost_regressor", "eta", 1);
    let repo = ModelRepository::open(dir.path(), VersionPolicy::default()).unwrap();
    let v1 = repo.get("eta", &VersionSpec::Latest).unwrap();

    install(dir.path(), "lightgbm_regressor", "eta", 2);
    let report = repo.reload();
    assert_eq!(report.loaded, vec![("eta".to_string(), 2)]);
    assert_eq!(report.unloaded, vec![("eta".to_string(), 1)]);
    assert_eq!(repo.get("eta", &VersionSpec::Latest).unwrap().version(), 2);
    // A caller holding v1 keeps a working model after the swap.
    assert_eq!(v1.version(), 1);
    assert!(
        v1.predict(&tandem_core::FeatureBatch::new(vec![0.0; 8], 8).unwrap())
            .is_ok()
    );

    // A broken new version: the report names it and version 2 stays served.
    std::fs::create_dir_all(dir.path().join("eta/3")).unwrap();
    std::fs::write(dir.path().join("eta/3/model.onnx"), b"not a model").unwrap();
    let report = repo.reload();
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].0.ends_with("eta/3/model.onnx"));
    assert_eq!(repo.get("eta", &VersionSpec::Latest).unwrap().version(), 2);
}

#[test]
fn a_bare_model_file_loads_with_its_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixtures().join("models/sklearn_gb_classifier/1");
    std::fs::copy(src.join("model.onnx"), dir.path().join("churn.onnx")).unwrap();
    std::fs::write(dir.path().join("churn.toml"), "[output]\ncolumn = 0\n").unwrap();
    let m = tandem_model::Model::load(dir.path().join("churn.onnx")).unwrap();
    assert_eq!((m.name(), m.version()), ("churn", 1));
    let b = tandem_core::FeatureBatch::new(vec![0.2; 8], 8).unwrap();
    let p = m.predict(&b).unwrap();
    let all = m.run(&b).unwrap();
    let tandem_model::OutputData::F32(probs) = &all[1].data else {
        panic!()
    };
    assert_eq!(p.row(0)[0], probs[0]);
}

//! Every way a model can fail to load or run gets its own error, naming
//! what to fix.

mod common;

use std::sync::Arc;

use common::{fixture_model, fixtures};
use tandem_core::FeatureBatch;
use tandem_model::{Model, ModelConfig, ModelError, NonFinite};

#[test]
fn missing_file_is_not_found() {
    let err = Model::load(fixtures().join("nope/model.onnx")).unwrap_err();
    assert!(matches!(err, ModelError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope/model.onnx"));
}

#[test]
fn a_file_that_is_not_onnx_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, "entity_id,f0,f1\n1,2,3\n").unwrap();
    let err = Model::load(&path).unwrap_err();
    assert!(matches!(err, ModelError::NotOnnx { .. }), "{err}");
}

#[test]
fn an_unsupported_operator_is_named_with_its_node() {
    let err = Model::load(fixtures().join("unsupported/sklearn_svr.onnx")).unwrap_err();
    match &err {
        ModelError::UnsupportedOperator {
            op, domain, node, ..
        } => {
            assert_eq!(op, "SVMRegressor");
            assert_eq!(domain, "ai.onnx.ml");
            assert!(!node.is_empty());
        }
        other => panic!("expected UnsupportedOperator, got {other}"),
    }
    assert!(err.to_string().contains("SVMRegressor"));
}

#[test]
fn wrong_input_width_is_refused_before_running() {
    let m = Model::load(fixture_model("xgboost_regressor")).unwrap();
    assert_eq!(m.width(), 8);
    let batch = FeatureBatch::new(vec![0.0; 7 * 3], 7).unwrap();
    let err = m.predict(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            ModelError::InputWidth {
                expected: 8,
                got: 7
            }
        ),
        "{err}"
    );
}

#[test]
fn feature_names_that_do_not_match_the_model_are_a_config_error() {
    let mut config = ModelConfig::default();
    config.features.names = vec!["a".into(), "b".into()];
    let err =
        Model::load_with(&fixture_model("xgboost_regressor"), "x".into(), 1, &config).unwrap_err();
    assert!(matches!(err, ModelError::Config { .. }), "{err}");
    assert!(err.to_string().contains("features.names"), "{err}");
}

#[test]
fn an_unknown_output_name_lists_the_outputs() {
    let mut config = ModelConfig::default();
    config.output.name = Some("proba".into());
    let err = Model::load_with(
        &fixture_model("sklearn_gb_classifier"),
        "x".into(),
        1,
        &config,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("output.name 'proba'") && msg.contains("output_probability"),
        "{msg}"
    );
}

#[test]
fn a_column_out_of_range_is_a_config_error() {
    let mut config = ModelConfig::default();
    config.output.column = Some(2);
    let err = Model::load_with(
        &fixture_model("sklearn_gb_classifier"),
        "x".into(),
        1,
        &config,
    )
    .unwrap_err();
    assert!(err.to_string().contains("output.column 2"), "{err}");
}

#[test]
fn a_sidecar_with_a_typo_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_model("xgboost_regressor"),
        dir.path().join("m.onnx"),
    )
    .unwrap();
    std::fs::write(dir.path().join("m.toml"), "[output]\ncolunm = 0\n").unwrap();
    let err = Model::load(dir.path().join("m.onnx")).unwrap_err();
    assert!(
        matches!(err, ModelError::Config { .. }) && err.to_string().contains("colunm"),
        "{err}"
    );
}

#[test]
fn nan_inputs_are_missing_values_by_default_and_follow_the_trees() {
    // The HistGradientBoosting model was trained with missing values: a NaN
    // row gets a finite prediction that differs from the all-zero row.
    let m = Model::load(fixture_model("sklearn_hgb_regressor")).unwrap();
    let batch = FeatureBatch::from_rows(&[[f32::NAN; 8], [0.0; 8]]).unwrap();
    let p = m.predict(&batch).unwrap();
    assert!(p.row(0)[0].is_finite());
    assert_ne!(p.row(0)[0], p.row(1)[0]);
}

#[test]
fn nan_through_a_network_is_reported_not_hidden() {
    let m = Model::load(fixture_model("sklearn_mlp_regressor")).unwrap();
    let mut rows = vec![[0.5f32; 8]; 3];
    rows[1][2] = f32::NAN;
    let p = m.predict(&FeatureBatch::from_rows(&rows).unwrap()).unwrap();
    assert_eq!(p.non_finite_rows().collect::<Vec<_>>(), vec![1]);
}

#[test]
fn the_reject_policy_names_row_and_feature() {
    let mut config = ModelConfig::default();
    config.inputs.non_finite = NonFinite::Reject;
    config.features.names = (0..8).map(|i| format!("f{i}")).collect();
    let m = Model::load_with(
        &fixture_model("sklearn_mlp_regressor"),
        "mlp".into(),
        1,
        &config,
    )
    .unwrap();
    let mut rows = vec![[0.5f32; 8]; 3];
    rows[2][5] = f32::INFINITY;
    let err = m
        .predict(&FeatureBatch::from_rows(&rows).unwrap())
        .unwrap_err();
    match err {
        ModelError::NonFiniteInput {
            row, feature, name, ..
        } => {
            assert_eq!((row, feature, name.as_str()), (2, 5, "f5"));
        }
        other => panic!("expected NonFiniteInput, got {other}"),
    }
}

#[test]
fn output_selection_defaults_to_the_positive_class_probability() {
    let m = Model::load(fixture_model("xgboost_classifier")).unwrap();
    assert_eq!(m.prediction_output(), "probabilities");
    let batch = FeatureBatch::from_rows(&[[0.3f32; 8]]).unwrap();
    let all = m.run(&batch).unwrap();
    let probs = match &all[1].data {
        tandem_model::OutputData::F32(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    let p = m.predict(&batch).unwrap();
    assert_eq!((p.width(), p.row(0)[0]), (1, probs[1]));
}

#[test]
fn a_multiclass_output_without_a_column_is_a_vector_prediction() {
    let m = Model::load(fixture_model("sklearn_hgb_classifier_3class")).unwrap();
    let p = m
        .predict(&FeatureBatch::from_rows(&[[0.1f32; 8], [0.9; 8]]).unwrap())
        .unwrap();
    assert_eq!(p.width(), 3);
    for r in 0..2 {
        assert!((p.row(r).iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn one_model_serves_many_threads_at_once() {
    let m = Arc::new(Model::load(fixture_model("xgboost_200x6")).unwrap());
    let rows: Vec<Vec<f32>> = (0..64)
        .map(|i| {
            (0..32)
                .map(|j| ((i * 31 + j * 7) % 13) as f32 / 6.0 - 1.0)
                .collect()
        })
        .collect();
    let batch = Arc::new(FeatureBatch::from_rows(&rows).unwrap());
    let expected = Arc::new(m.predict(&batch).unwrap());
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (m, batch, expected) = (m.clone(), batch.clone(), expected.clone());
            std::thread::spawn(move || {
                for i in 0..20 {
                    // Alternate whole batches and single rows.
                    if (i + t) % 2 == 0 {
                        assert_eq!(m.predict(&batch).unwrap().values(), expected.values());
                    } else {
                        let r = (i * 7 + t) % 64;
                        let one = FeatureBatch::new(batch.row(r).to_vec(), 32).unwrap();
                        assert_eq!(m.predict(&one).unwrap().values(), expected.row(r));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_graph_that_makes_the_runtime_panic_is_a_compile_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    tandem_testing::write_panicking_onnx(&path, 4);
    let err = Model::load(&path).unwrap_err();
    match &err {
        ModelError::Compile { path: p, detail } => {
            assert_eq!(p, &path);
            assert!(detail.contains("panicked"), "{detail}");
        }
        other => panic!("expected Compile, got {other}"),
    }
    // The process goes on: a good model loads after it.
    assert!(Model::load(fixtures().join("models/xgboost_regressor/1/model.onnx")).is_ok());
}

#[test]
fn a_model_that_makes_the_runtime_panic_while_scoring_is_a_run_error() {
    // tract's Gather indexes its data with the input's values unchecked:
    // this model loads, scores values 0-3, and tract panics on any other.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    tandem_testing::write_scoring_panic_onnx(&path, 2);
    let m = Model::load(&path).unwrap();
    let ok = FeatureBatch::new(vec![0.0, 1.0, 3.0, 2.0], 2).unwrap();
    // Two output columns read as class probabilities: the second.
    let p = m.predict(&ok).unwrap();
    assert_eq!((p.row(0)[0], p.row(1)[0]), (20.0, 30.0));
    let bad = FeatureBatch::new(vec![0.0, 1.0, 9.0, 2.0], 2).unwrap();
    match m.predict(&bad) {
        Err(ModelError::Run(detail)) => {
            assert!(detail.contains("panicked while scoring"), "{detail}");
            assert!(detail.contains("index out of bounds"), "{detail}");
        }
        other => panic!("expected a run error, got {other:?}"),
    }
    // The model goes on scoring, from this thread and others.
    let p = m.predict(&ok).unwrap();
    assert_eq!((p.row(0)[0], p.row(1)[0]), (20.0, 30.0));
    std::thread::scope(|s| {
        s.spawn(|| assert!(m.predict(&ok).is_ok()));
    });
}

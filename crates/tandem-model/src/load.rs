//! Reading an ONNX file into a runnable tract plan: the protobuf checks, the
//! `ZipMap` rewrite, the operator check, and tract's type/optimise/plan steps.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use tract_onnx::pb::{ModelProto, TypeProto, type_proto};
use tract_onnx::prelude::*;

use crate::error::ModelError;

/// tract's ONNX front end with tandem's ONNX-ML operators registered. Built
/// once per process.
pub(crate) fn framework() -> &'static tract_onnx::Onnx {
    static ONNX: OnceLock<tract_onnx::Onnx> = OnceLock::new();
    ONNX.get_or_init(|| {
        let mut onnx = tract_onnx::onnx();
        crate::ml::register(&mut onnx.op_register);
        onnx
    })
}

/// A parsed model file, before tract sees it.
pub(crate) struct Proto {
    pub model: ModelProto,
    /// Class labels of outputs that were `ZipMap`s, by output name.
    pub zipmap_labels: BTreeMap<String, Vec<String>>,
    /// Operator counts, as `domain:op` (domain omitted for the default one).
    pub operators: BTreeMap<String, usize>,
}

pub(crate) fn read_proto(path: &Path) -> Result<Proto, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ModelError::NotFound {
            path: path.to_path_buf(),
        },
        _ => ModelError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let not_onnx = |detail: String| ModelError::NotOnnx {
        path: path.to_path_buf(),
        detail,
    };
    let model = framework()
        .proto_model_for_read(&mut bytes.as_slice())
        .map_err(|e| not_onnx(crate::error::chain(&e)))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| not_onnx("no graph".into()))?;
    if model.ir_version <= 0 || graph.node.is_empty() || graph.output.is_empty() {
        return Err(not_onnx(
            "no IR version, nodes or outputs (is this an ONNX file?)".into(),
        ));
    }
    let mut proto = Proto {
        model,
        zipmap_labels: BTreeMap::new(),
        operators: BTreeMap::new(),
    };
    for node in &proto
        .model
        .graph
        .as_ref()
        .map_or(&[][..], |g| &g.node[..])
        .to_vec()
    {
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}:{}", node.domain, node.op_type)
        };
        *proto.operators.entry(key).or_default() += 1;
    }
    rewrite_zipmaps(&mut proto);
    check_operators(&proto.model, path)?;
    Ok(proto)
}

/// `ZipMap` turns the probability tensor into a sequence of maps, which a
/// tensor runtime cannot carry. It adds no information (the keys are the
/// class labels, kept in the metadata), so it becomes an `Identity` and the
/// output keeps its name but carries the `[N, C]` probabilities.
fn rewrite_zipmaps(proto: &mut Proto) {
    let Some(graph) = proto.model.graph.as_mut() else {
        return;
    };
    for node in graph.node.iter_mut().filter(|n| n.op_type == "ZipMap") {
        let mut labels = vec![];
        for attr in &node.attribute {
            match attr.name.as_str() {
                "classlabels_int64s" => labels.extend(attr.ints.iter().map(|i| i.to_string())),
                "classlabels_strings" => labels.extend(
                    attr.strings
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned()),
                ),
                _ => {}
            }
        }
        if let Some(out) = node.output.first() {
            proto.zipmap_labels.insert(out.clone(), labels);
        }
        node.op_type = "Identity".into();
        node.domain = String::new();
        node.attribute.clear();
    }
    for output in graph.output.iter_mut() {
        if proto.zipmap_labels.contains_key(&output.name) {
            output.r#type = Some(TypeProto {
                denotation: String::new(),
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1, // FLOAT
                    shape: None,
                })),
            });
        }
    }
}

fn check_operators(model: &ModelProto, path: &Path) -> Result<(), ModelError> {
    let register = &framework().op_register.0;
    let graph = model.graph.as_ref().map_or(&[][..], |g| &g.node[..]);
    for node in graph {
        if !register.contains_key(&node.op_type) {
            let name = if node.name.is_empty() {
                node.output.first().cloned().unwrap_or_default()
            } else {
                node.name.clone()
            };
            return Err(ModelError::UnsupportedOperator {
                op: node.op_type.clone(),
                domain: node.domain.clone(),
                node: name,
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// The width of the model's (single) input, from its declared shape.
pub(crate) fn declared_width(model: &ModelProto) -> Option<usize> {
    let graph = model.graph.as_ref()?;
    let init: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !init.contains(i.name.as_str()))?;
    let type_proto::Value::TensorType(t) = input.r#type.as_ref()?.value.as_ref()?;
    let dims = &t.shape.as_ref()?.dim;
    let last = dims.last()?;
    match last.value.as_ref()? {
        tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v) => {
            usize::try_from(*v).ok()
        }
        _ => None,
    }
}

/// Rows per run of the fixed-size plan: tract optimises much better for a
/// concrete batch dimension (3-4x on dense layers), so large batches are run
/// in chunks of this many rows on a plan built for exactly this size.
pub(crate) const CHUNK: usize = 1024;
/// Rows per run of the second fixed-size plan, for batches that hold whole
/// multiples of it: the bare MLP fixture scores 8192 rows about 1.2x faster
/// in chunks of 4096 than of 1024 (machine C; machine B measured +11 %).
pub(crate) const BIG_CHUNK: usize = 4096;

/// The prepared plans of a model.
pub(crate) struct Plans {
    /// Any batch size (symbolic `N`).
    pub any: Arc<TypedRunnableModel>,
    /// Exactly [`CHUNK`] rows.
    pub chunk: Arc<TypedRunnableModel>,
    /// Exactly [`BIG_CHUNK`] rows.
    pub big_chunk: Arc<TypedRunnableModel>,
    /// The typed (decluttered) model, for metadata.
    pub typed: TypedModel,
}

/// Parses the graph once, then types, optimises and plans it for a
/// `[N, width]` f32 input with a symbolic batch dimension, and again for
/// `[CHUNK, width]` and `[BIG_CHUNK, width]`.
pub(crate) fn plan(proto: &Proto, width: usize, path: &Path) -> Result<Plans, ModelError> {
    let dir = path.parent().and_then(|d| d.to_str());
    let parsed = framework()
        .parse(&proto.model, dir)
        .map_err(|e| ModelError::compile(path, &e))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(ModelError::Compile {
            path: path.to_path_buf(),
            detail: format!("unresolved graph inputs {:?}", parsed.unresolved_inputs),
        });
    }
    let model = parsed.model;
    if model
        .input_outlets()
        .map_err(|e| ModelError::compile(path, &e))?
        .len()
        != 1
    {
        return Err(ModelError::Compile {
            path: path.to_path_buf(),
            detail: "tandem serves models with exactly one input tensor [N, F]".into(),
        });
    }
    let build = |mut model: InferenceModel, rows: Option<usize>| -> TractResult<TypedModel> {
        let n = match rows {
            Some(r) => r.to_dim(),
            None => model.symbols.sym("N").to_dim(),
        };
        model.set_input_fact(0, f32::fact([n, width.to_dim()]).into())?;
        model.into_typed()?.into_decluttered()
    };
    let typed = build(model.clone(), None).map_err(|e| ModelError::compile(path, &e))?;
    let any = typed
        .clone()
        .into_optimized()
        .and_then(|m| m.into_runnable());
    let chunk = build(model.clone(), Some(CHUNK))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable());
    let big_chunk = build(model, Some(BIG_CHUNK))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable());
    Ok(Plans {
        any: any.map_err(|e| ModelError::compile(path, &e))?,
        chunk: chunk.map_err(|e| ModelError::compile(path, &e))?,
        big_chunk: big_chunk.map_err(|e| ModelError::compile(path, &e))?,
        typed,
    })
}

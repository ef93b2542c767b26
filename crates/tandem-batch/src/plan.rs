//! From flags to a DataFusion plan: register the input, resolve the id and
//! feature columns against the model, and build the scoring query.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::datasource::file_format::options::{CsvReadOptions, ParquetReadOptions};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::options::ReadOptions;
use datafusion::logical_expr::Partitioning;
use datafusion::prelude::{SessionConfig, SessionContext};
use tandem_model::Model;

use crate::error::BatchError;
use crate::udf::{PredictUdf, ShardUdf};

/// The input data set: a file, a directory, or a glob, of Parquet or CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Path, directory or glob as given.
    pub path: String,
    /// Parquet or CSV.
    pub format: Format,
    /// The objects a remote glob matched (full URLs), read in place of
    /// `path`; empty otherwise.
    pub files: Vec<String>,
}

/// Input file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// CSV with a header row.
    Csv,
}

fn format_of(name: &str) -> Option<Format> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".parquet") || lower.ends_with(".pq") {
        Some(Format::Parquet)
    } else if lower.ends_with(".csv") {
        Some(Format::Csv)
    } else {
        None
    }
}

impl InputSpec {
    /// Resolves a local path (as [`InputSpec::resolve`]) or an object-store
    /// URL ([`crate::objects`]): checks that it exists and tells its format,
    /// from the extension or, for a prefix, from the objects under it.
    pub async fn open(path: &str) -> Result<InputSpec, BatchError> {
        if !crate::objects::is_remote(path) {
            return InputSpec::resolve(path);
        }
        let err = |detail: &str| BatchError::Input {
            path: path.to_owned(),
            detail: detail.to_owned(),
        };
        if path.contains(['*', '?', '[']) {
            let files = crate::objects::expand_glob(path).await?;
            let format = format_of(path)
                .or_else(|| files.first().and_then(|f| format_of(f)))
                .ok_or_else(|| err("cannot tell the format: end the glob in .parquet or .csv"))?;
            return Ok(InputSpec {
                path: path.to_owned(),
                format,
                files,
            });
        }
        let first = crate::objects::first_file(path).await?;
        let format = format_of(&first).ok_or_else(|| {
            err("cannot tell the format: name a .parquet or .csv object, prefix or glob")
        })?;
        // A prefix is a directory to DataFusion only with its slash.
        let object = path
            .split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/').ends_with(first.as_str()));
        let path = if object || path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        };
        Ok(InputSpec {
            path,
            format,
            files: Vec::new(),
        })
    }

    /// Resolves the format from the path (extension, or the files of a
    /// directory) and checks that a local input exists, naming it if not.
    pub fn resolve(path: &str) -> Result<InputSpec, BatchError> {
        let err = |detail: String| BatchError::Input {
            path: path.to_owned(),
            detail,
        };
        let by_ext = format_of;
        let is_glob = path.contains(['*', '?', '[']);
        let local = Path::new(path);
        let format = if !is_glob && local.is_dir() {
            let mut found = None;
            let entries = std::fs::read_dir(local).map_err(|e| err(e.to_string()))?;
            for entry in entries.flatten() {
                if let Some(f) = by_ext(&entry.file_name().to_string_lossy()) {
                    found = Some(f);
                    break;
                }
            }
            found.ok_or_else(|| err("the directory holds no .parquet or .csv files".into()))?
        } else {
            if !is_glob && !path.contains("://") {
                std::fs::File::open(local).map_err(|e| err(e.to_string()))?;
            }
            by_ext(path).ok_or_else(|| {
                err(
                    "cannot tell the format: name a .parquet or .csv file, directory or glob"
                        .into(),
                )
            })?
        };
        Ok(InputSpec {
            path: path.to_owned(),
            format,
            files: Vec::new(),
        })
    }
}

/// A session with `tandem_shard` (and, given a model, `predict` with its
/// fill value) registered, and the input as table `input`.
pub async fn session(
    input: &InputSpec,
    model: Option<(&Arc<Model>, f32)>,
) -> Result<SessionContext, BatchError> {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let config = SessionConfig::new()
        .with_target_partitions(cores)
        .with_batch_size(8192);
    let ctx = SessionContext::new_with_config_rt(config, crate::objects::runtime_env());
    if let Some((model, fill)) = model {
        ctx.register_udf(PredictUdf::new(model.clone(), fill).into_udf());
    }
    ctx.register_udf(ShardUdf::default().into_udf());
    register_input(&ctx, input, &input.path).await?;
    Ok(ctx)
}

/// Registers the input as table `input`, read from `path` (the input's
/// path, or its absolute form for a cluster), or from the objects a remote
/// glob matched.
pub async fn register_input(
    ctx: &SessionContext,
    input: &InputSpec,
    path: &str,
) -> Result<(), BatchError> {
    let err = |e: datafusion::error::DataFusionError| BatchError::Input {
        path: input.path.clone(),
        detail: e.to_string(),
    };
    let config = ctx.copied_config();
    let options = match input.format {
        Format::Parquet => {
            ParquetReadOptions::default().to_listing_options(&config, ctx.copied_table_options())
        }
        Format::Csv => CsvReadOptions::new()
            .has_header(true)
            .to_listing_options(&config, ctx.copied_table_options()),
    };
    if input.files.is_empty() {
        return ctx
            .register_listing_table("input", path, options, None, None)
            .await
            .map_err(err);
    }
    let urls = input
        .files
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let schema = options
        .infer_schema(&ctx.state(), &urls[0])
        .await
        .map_err(err)?;
    let table = ListingTable::try_new(
        ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(schema),
    )
    .map_err(err)?;
    ctx.register_table("input", Arc::new(table)).map_err(err)?;
    Ok(())
}

/// Registers `base` as view `tandem_src`, spread round-robin over every
/// core, and returns the query that reads it. A single large Parquet row
/// group (or one CSV file) is one scan partition; without this, scoring
/// would run on one core.
pub async fn parallel_source(ctx: &SessionContext, base: &str) -> Result<String, BatchError> {
    let cores = ctx.copied_config().target_partitions();
    let df = ctx
        .sql(base)
        .await?
        .repartition(Partitioning::RoundRobinBatch(cores))?;
    ctx.register_table("tandem_src", df.into_view())?;
    Ok("SELECT * FROM tandem_src".to_owned())
}

/// Checks a `--shard I/N` value.
pub fn check_shard(shard: Option<(u32, u32)>) -> Result<(), BatchError> {
    match shard {
        Some((i, n)) if n == 0 || i >= n => Err(BatchError::Invalid(format!(
            "--shard {i}/{n}: need 0 <= I < N"
        ))),
        _ => Ok(()),
    }
}

/// Quotes an identifier for SQL.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The query whose output is scored: `--sql` (default `SELECT * FROM
/// input`) filtered by `--where`.
pub fn base_query(sql: Option<&str>, filter: Option<&str>) -> String {
    let base = sql.unwrap_or("SELECT * FROM input");
    match filter {
        Some(w) => format!("SELECT * FROM ({base}) AS q WHERE {w}"),
        None => base.to_owned(),
    }
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// The feature columns, in model order: `explicit` if given, else the
/// model's feature names, else every numeric column but the id. Checked
/// against the input schema and the model's width.
pub fn resolve_features(
    schema: &Schema,
    id_column: &str,
    explicit: Option<&[String]>,
    model: &Model,
) -> Result<Vec<String>, BatchError> {
    if schema.field_with_name(id_column).is_err() {
        return Err(BatchError::Column {
            column: id_column.to_owned(),
            detail: format!(
                "(the id column) is not in the input; columns are {}",
                column_list(schema)
            ),
        });
    }
    let names = &model.metadata().feature_names;
    let features: Vec<String> = match explicit {
        Some(list) => {
            if !names.is_empty() && list != names.as_slice() {
                return Err(BatchError::Schema(format!(
                    "--features {} differ from the model's feature names {} (order matters)",
                    list.join(","),
                    names.join(",")
                )));
            }
            list.to_vec()
        }
        None if !names.is_empty() => names.clone(),
        None => schema
            .fields()
            .iter()
            .filter(|f| f.name() != id_column && is_numeric(f.data_type()))
            .map(|f| f.name().clone())
            .collect(),
    };
    for f in &features {
        match schema.field_with_name(f) {
            Err(_) => {
                return Err(BatchError::Column {
                    column: f.clone(),
                    detail: format!(
                        "(a model feature) is not in the input; columns are {}",
                        column_list(schema)
                    ),
                });
            }
            Ok(field)
                if !is_numeric(field.data_type())
                    && field.data_type() != &DataType::Utf8
                    && field.data_type() != &DataType::Utf8View
                    && field.data_type() != &DataType::LargeUtf8 =>
            {
                return Err(BatchError::Column {
                    column: f.clone(),
                    detail: format!("has type {} and cannot be a feature", field.data_type()),
                });
            }
            Ok(_) => {}
        }
    }
    if features.len() != model.width() {
        return Err(BatchError::Schema(format!(
            "the model takes {} features but {} were selected ({}); name them with --features",
            model.width(),
            features.len(),
            features.join(",")
        )));
    }
    Ok(features)
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The id and the features as `entity_id, f0, f1, ...` (plus `prediction`
/// when `with_prediction`), of shard `shard` when given. FLOAT (f32)
/// columns of `schema` pass as they are, since the model takes f32; every
/// other feature is `TRY_CAST` to DOUBLE (a value that is not a number
/// becomes null and takes the fill value). Read the columns with
/// [`crate::rows::FeatureColumn`].
pub fn scoring_query(
    base: &str,
    id_column: &str,
    features: &[String],
    schema: &Schema,
    shard: Option<(u32, u32)>,
    with_prediction: bool,
) -> String {
    let id = ident(id_column);
    let mut cols = vec![format!("CAST({id} AS VARCHAR) AS entity_id")];
    let values: Vec<String> = features
        .iter()
        .map(|f| {
            let float = schema
                .field_with_name(f)
                .is_ok_and(|field| field.data_type() == &DataType::Float32);
            if float {
                ident(f)
            } else {
                format!("TRY_CAST({} AS DOUBLE)", ident(f))
            }
        })
        .collect();
    for (i, c) in values.iter().enumerate() {
        cols.push(format!("{c} AS {}", ident(&format!("f{i}"))));
    }
    if with_prediction {
        cols.push(format!("predict({}) AS prediction", values.join(", ")));
    }
    let mut q = format!("SELECT {} FROM ({base}) AS src", cols.join(", "));
    if let Some((i, n)) = shard {
        q.push_str(&format!(
            " WHERE tandem_shard(CAST({id} AS VARCHAR), {n}) = {i}"
        ));
    }
    q
}

/// [`scoring_query`] without a shard or a prediction, for a job that
/// reads the values itself (refresh).
pub fn features_query(base: &str, id_column: &str, features: &[String], schema: &Schema) -> String {
    scoring_query(base, id_column, features, schema, None, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
    }

    #[test]
    fn scoring_query_casts_and_shards() {
        let q = scoring_query(
            "SELECT * FROM input",
            "id",
            &["x".into(), "y z".into()],
            &Schema::empty(),
            Some((1, 4)),
            true,
        );
        assert_eq!(
            q,
            r#"SELECT CAST("id" AS VARCHAR) AS entity_id, TRY_CAST("x" AS DOUBLE) AS "f0", TRY_CAST("y z" AS DOUBLE) AS "f1", predict(TRY_CAST("x" AS DOUBLE), TRY_CAST("y z" AS DOUBLE)) AS prediction FROM (SELECT * FROM input) AS src WHERE tandem_shard(CAST("id" AS VARCHAR), 4) = 1"#
        );
        // FLOAT columns go to the model as they are.
        let schema = Schema::new(vec![
            Field::new("x", DataType::Float32, true),
            Field::new("y z", DataType::Int64, true),
        ]);
        let q = scoring_query(
            "SELECT * FROM input",
            "id",
            &["x".into(), "y z".into()],
            &schema,
            None,
            true,
        );
        assert_eq!(
            q,
            r#"SELECT CAST("id" AS VARCHAR) AS entity_id, "x" AS "f0", TRY_CAST("y z" AS DOUBLE) AS "f1", predict("x", TRY_CAST("y z" AS DOUBLE)) AS prediction FROM (SELECT * FROM input) AS src"#
        );
    }

    #[test]
    fn where_wraps_the_base_query() {
        assert_eq!(
            base_query(Some("SELECT id, a * 2 AS a2 FROM input"), Some("a2 > 1")),
            "SELECT * FROM (SELECT id, a * 2 AS a2 FROM input) AS q WHERE a2 > 1"
        );
    }
}

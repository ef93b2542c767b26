//! From flags to a DataFusion plan: register the input, resolve the id and
//! feature columns against the model, and build the scoring query.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::Statistics;
use datafusion::common::stats::Precision;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::options::{CsvReadOptions, ParquetReadOptions};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::options::ReadOptions;
use datafusion::logical_expr::Partitioning;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use tandem_model::Model;

use crate::error::BatchError;
use crate::mapped::MappedReaderFactory;
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
    if input.format == Format::Parquet
        && let Some(table) = ctx.table_provider("input").await.ok()
    {
        ctx.deregister_table("input")?;
        ctx.register_table(
            "input",
            Arc::new(SplitScan {
                inner: table,
                parts: cores,
            }),
        )?;
    }
    Ok(ctx)
}

/// Rows a split of one Parquet file gets at least ([`SplitScan`]).
const MIN_SPLIT_ROWS: usize = 65_536;

/// The input table of a local run, splitting the scan of a single Parquet
/// file into contiguous row ranges, one partition each. DataFusion reads
/// a row group in one partition, and pyarrow and parquet-rs write up to
/// 1M rows in one row group, so a typical one-file input was decoded on
/// one core whatever came after. Each range is a file-level row selection
/// ([`ParquetRowSelection`]), which the reader maps onto the row groups
/// (and, when the file has a page index, onto the pages): together the
/// ranges read every row once. Local Parquet files are read through
/// memory maps (`crate::mapped`). Not used on a Ballista cluster, whose
/// plan serialization carries neither the selections nor the reader.
#[derive(Debug)]
struct SplitScan {
    inner: Arc<dyn TableProvider>,
    parts: usize,
}

#[async_trait::async_trait]
impl TableProvider for SplitScan {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        Ok(self.local_plan(plan))
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> datafusion::error::Result<ScanResult> {
        let plan = self.inner.scan_with_args(state, args).await?.into_inner();
        Ok(self.local_plan(plan).into())
    }
}

impl SplitScan {
    /// The scan `plan` with its one file split into row ranges and its
    /// local files read through maps.
    fn local_plan(&self, plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let plan = split_rows(&plan, self.parts).unwrap_or(plan);
        map_local_files(&plan).unwrap_or(plan)
    }
}

/// `plan` reading its Parquet files through memory maps
/// ([`MappedReaderFactory`]), or `None` when it is not a Parquet scan of
/// local files.
fn map_local_files(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = plan.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    if config.object_store_url != ObjectStoreUrl::local_filesystem() {
        return None;
    }
    let source = config.file_source().downcast_ref::<ParquetSource>()?;
    let inner = source.parquet_file_reader_factory()?.clone();
    let source = source
        .clone()
        .with_parquet_file_reader_factory(Arc::new(MappedReaderFactory::new(inner)));
    let mapped = FileScanConfigBuilder::from(config.clone())
        .with_source(Arc::new(source))
        .build();
    Some(DataSourceExec::from_data_source(mapped))
}

/// `plan` with its one Parquet file split into up to `parts` row ranges,
/// or `None` when it is not a scan of one whole Parquet file with known
/// row count and enough rows.
fn split_rows(plan: &Arc<dyn ExecutionPlan>, parts: usize) -> Option<Arc<dyn ExecutionPlan>> {
    let exec = plan.downcast_ref::<DataSourceExec>()?;
    let config = exec.data_source().downcast_ref::<FileScanConfig>()?;
    config.file_source().downcast_ref::<ParquetSource>()?;
    let mut files = config.file_groups.iter().flat_map(|g| g.iter());
    let (Some(file), None) = (files.next(), files.next()) else {
        return None;
    };
    if file.range.is_some() || !file.extensions.is_empty() {
        return None;
    }
    let rows = match file.statistics.as_ref()?.num_rows {
        Precision::Exact(n) => n,
        _ => return None,
    };
    let parts = parts.min(rows / MIN_SPLIT_ROWS);
    if parts < 2 {
        return None;
    }
    let groups: Vec<FileGroup> = (0..parts)
        .map(|i| {
            let (from, to) = (rows * i / parts, rows * (i + 1) / parts);
            let mut selectors = Vec::with_capacity(3);
            if from > 0 {
                selectors.push(RowSelector::skip(from));
            }
            selectors.push(RowSelector::select(to - from));
            if rows > to {
                selectors.push(RowSelector::skip(rows - to));
            }
            let part = file
                .clone()
                .with_extension(ParquetRowSelection::new(RowSelection::from(selectors)));
            FileGroup::new(vec![part])
        })
        .collect();
    let split = FileScanConfigBuilder::from(config.clone())
        .with_file_groups(groups)
        .build();
    Some(DataSourceExec::from_data_source(split))
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

    /// One Parquet file, one row group, `rows` rows: `entity_id` = `e{i}`,
    /// `x` = i.
    fn one_row_group(path: &std::path::Path, rows: usize) {
        use datafusion::arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray};
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::file::properties::WriterProperties;
        let schema = Arc::new(Schema::new(vec![
            Field::new("entity_id", DataType::Utf8, false),
            Field::new("x", DataType::Float32, false),
        ]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(rows))
            .build();
        let file = std::fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        for start in (0..rows).step_by(50_000) {
            let end = (start + 50_000).min(rows);
            let cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    (start..end).map(|i| format!("e{i}")),
                )),
                Arc::new(Float32Array::from_iter_values(
                    (start..end).map(|i| i as f32),
                )),
            ];
            w.write(&RecordBatch::try_new(schema.clone(), cols).unwrap())
                .unwrap();
        }
        let meta = w.close().unwrap();
        assert_eq!(meta.num_row_groups(), 1);
    }

    #[tokio::test]
    async fn one_parquet_file_is_scanned_in_row_ranges_that_read_every_row_once() {
        use datafusion::arrow::array::Float32Array;
        use datafusion::prelude::ParquetReadOptions;
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.parquet");
        let rows = 200_000;
        one_row_group(&path, rows);

        let ctx = SessionContext::new();
        ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let table = ctx.table_provider("t").await.unwrap();
        let plan = table.scan(&ctx.state(), None, &[], None).await.unwrap();
        assert_eq!(plan.properties().output_partitioning().partition_count(), 1);
        // 200k rows make at most 3 ranges of >= 65,536 rows.
        let split = split_rows(&plan, 4).expect("split");
        assert_eq!(
            split.properties().output_partitioning().partition_count(),
            3
        );
        // The partitions share their files as work (DataFusion's file
        // stream), so any partition may read any range; together they read
        // each row once (three whole-file scans would read each thrice).
        let mut seen = vec![0u8; rows];
        for part in 0..3 {
            let mut stream = split.execute(part, ctx.task_ctx()).unwrap();
            while let Some(batch) = stream.next().await {
                let batch = batch.unwrap();
                let x = batch
                    .column(1)
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap();
                for v in x.values() {
                    seen[*v as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|c| *c == 1), "every row exactly once");
        // Too few rows to split, or one part asked for: left alone.
        assert!(split_rows(&plan, 1).is_none());
        let small = dir.path().join("small.parquet");
        one_row_group(&small, 100_000);
        ctx.register_parquet("s", small.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let s = ctx.table_provider("s").await.unwrap();
        let plan = s.scan(&ctx.state(), None, &[], None).await.unwrap();
        assert!(split_rows(&plan, 2).is_none());

        // Through a batch session and SQL (projection, aggregation).
        let input = InputSpec::open(path.to_str().unwrap()).await.unwrap();
        let ctx = session(&input, None).await.unwrap();
        let out = ctx
            .sql("SELECT count(*) AS n, count(DISTINCT entity_id) AS d, sum(CAST(x AS DOUBLE)) AS s FROM input")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let col = |i: usize| {
            datafusion::arrow::compute::cast(out[0].column(i), &DataType::Float64).unwrap()
        };
        let value = |i: usize| {
            col(i)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Float64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!(value(0), rows as f64);
        assert_eq!(value(1), rows as f64);
        assert_eq!(value(2), (rows as f64 - 1.0) * rows as f64 / 2.0);
    }

    #[tokio::test]
    async fn local_parquet_is_read_through_a_map_that_refuses_a_file_changed_since_planning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.parquet");
        let rows = 150_000;
        one_row_group(&path, rows);
        let input = InputSpec::open(path.to_str().unwrap()).await.unwrap();
        let ctx = session(&input, None).await.unwrap();
        let table = ctx.table_provider("input").await.unwrap();
        let plan = table.scan(&ctx.state(), None, &[], None).await.unwrap();
        let exec = plan.downcast_ref::<DataSourceExec>().expect("a file scan");
        let config = exec
            .data_source()
            .downcast_ref::<FileScanConfig>()
            .expect("file scan config");
        let source = config
            .file_source()
            .downcast_ref::<ParquetSource>()
            .expect("parquet");
        let factory = source.parquet_file_reader_factory().expect("a reader");
        assert!(
            format!("{factory:?}").starts_with("MappedReaderFactory"),
            "{factory:?}"
        );
        // Every value read back through the map.
        let sum = |ctx: SessionContext| async move {
            ctx.sql("SELECT sum(CAST(x AS DOUBLE)) AS s FROM input")
                .await
                .unwrap()
                .collect()
                .await
        };
        let out = sum(ctx).await.unwrap();
        let s = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(s, (rows as f64 - 1.0) * rows as f64 / 2.0);

        // The file rewritten shorter after planning: an error naming it,
        // not a read past the end of the map.
        let ctx = session(&input, None).await.unwrap();
        let df = ctx
            .sql("SELECT sum(CAST(x AS DOUBLE)) AS s FROM input")
            .await
            .unwrap();
        let plan = df.create_physical_plan().await.unwrap();
        one_row_group(&path, 100_000);
        let err = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .expect_err("the file changed");
        let msg = err.to_string();
        assert!(
            msg.contains("one.parquet") && msg.contains("changed"),
            "{msg}"
        );
    }
}

//! Local Parquet inputs read through read-only memory maps.
//!
//! DataFusion reads a local file with `pread` into freshly allocated
//! buffers: for a row group it fetches every selected column chunk before
//! decoding, so a 1M-row, one-row-group file was copied whole into new
//! memory (and the kernel zeroed every new page first) before the first
//! value was decoded. The decoder only needs the bytes, so each range it
//! asks for is mapped instead: no copy, no fresh memory, and the pages
//! come straight from the page cache. Each range is its own map, released
//! with the last slice of it, as the buffers it replaces were: a run keeps
//! the row groups it is decoding mapped, not the whole file, so its
//! resident memory does not grow with the input. Footer and page-index
//! reads still go through the reader DataFusion made (and its metadata
//! cache).
//!
//! A mapped file must not be truncated in place while a run reads it (the
//! kernel would stop the process with `SIGBUS` on a read past the new
//! end); replacing it (write elsewhere, then rename), the way tools write
//! Parquet, is safe: the map keeps the old file.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::{BoxFuture, ready};
use object_store::local::LocalFileSystem;

/// Makes readers that serve data ranges from a map of the local file and
/// everything else (the footer, the page index) from `inner`.
#[derive(Debug)]
pub(crate) struct MappedReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
}

impl MappedReaderFactory {
    pub(crate) fn new(inner: Arc<dyn ParquetFileReaderFactory>) -> Self {
        MappedReaderFactory { inner }
    }
}

impl ParquetFileReaderFactory for MappedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let path = LocalFileSystem::new()
            .path_to_filesystem(&file.object_meta.location)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let planned = file.object_meta.size;
        let inner = self
            .inner
            .create_reader(partition_index, file, metadata_size_hint, metrics)?;
        let file = open_planned(&path, planned)?;
        Ok(Box::new(MappedReader {
            inner,
            file,
            len: planned,
            path,
        }))
    }
}

/// The file at `path`, provided it still has the `planned` size the plan
/// was made with.
fn open_planned(path: &Path, planned: u64) -> Result<std::fs::File> {
    let context = |e: std::io::Error| {
        DataFusionError::Execution(format!("cannot map {}: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(context)?;
    let len = file.metadata().map_err(context)?.len();
    if len != planned {
        return Err(DataFusionError::Execution(format!(
            "{} changed while the run was planned: {planned} bytes then, {len} now",
            path.display()
        )));
    }
    Ok(file)
}

struct MappedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    file: std::fs::File,
    /// The file's size when it was opened.
    len: u64,
    path: PathBuf,
}

impl MappedReader {
    /// Bytes `range` of the file, mapped read-only.
    fn slice(&self, range: Range<u64>) -> Result<Bytes, ParquetError> {
        let len = self.len;
        if range.start > range.end || range.end > len {
            return Err(ParquetError::EOF(format!(
                "{}: bytes {}..{} asked of a {len}-byte file",
                self.path.display(),
                range.start,
                range.end
            )));
        }
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        let size = usize::try_from(range.end - range.start)
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        // SAFETY: the map is read-only and private, inside the file as it
        // was opened (checked above), and only read through the `Bytes`
        // that own it. The one hazard of a file map is another process
        // truncating the file while it is mapped, which makes a later read
        // of the lost pages fault (SIGBUS); the module's docs say so.
        // Changing the bytes in place only changes what is read, as it
        // would with `pread`.
        #[allow(unsafe_code)]
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(range.start)
                .len(size)
                .map(&self.file)
        }
        .map_err(|e| ParquetError::General(format!("cannot map {}: {e}", self.path.display())))?;
        Ok(Bytes::from_owner(map))
    }
}

impl MappedReader {
    /// Bytes of each of `ranges`, mapping ranges less than [`COALESCE`]
    /// apart together (as object stores coalesce reads): a row group's
    /// column chunks are usually one map, so a wide table does not need a
    /// map per chunk (the kernel allows a process about 65,000).
    fn slices(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>, ParquetError> {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        order.sort_by_key(|&i| ranges[i].start);
        let mut out = vec![Bytes::new(); ranges.len()];
        let mut at = 0;
        while at < order.len() {
            let first = &ranges[order[at]];
            let (start, mut end) = (first.start, first.end);
            let mut next = at + 1;
            while next < order.len() && ranges[order[next]].start <= end.saturating_add(COALESCE) {
                end = end.max(ranges[order[next]].end);
                next += 1;
            }
            let map = self.slice(start..end)?;
            for &i in &order[at..next] {
                let r = &ranges[i];
                if r.start > r.end {
                    return Err(ParquetError::EOF(format!(
                        "{}: bytes {}..{} asked of a {}-byte file",
                        self.path.display(),
                        r.start,
                        r.end,
                        self.len
                    )));
                }
                out[i] = map.slice((r.start - start) as usize..(r.end - start) as usize);
            }
            at = next;
        }
        Ok(out)
    }
}

/// Ranges closer than this are mapped together (object_store's default
/// for coalescing reads).
const COALESCE: u64 = 1 << 20;

impl AsyncFileReader for MappedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        ready(self.slice(range)).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        ready(self.slices(&ranges)).boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        self.inner.get_metadata(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_slices_of_the_file_and_a_range_past_its_end_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bytes.bin");
        let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        std::fs::write(&path, &bytes).expect("write");
        let file = open_planned(&path, bytes.len() as u64).expect("opens");
        let reader = MappedReader {
            inner: Box::new(NoMetadata),
            file,
            len: bytes.len() as u64,
            path: path.clone(),
        };
        assert_eq!(
            &reader.slice(100..4_200).expect("in range")[..],
            &bytes[100..4_200]
        );
        assert_eq!(reader.slice(10_000..10_000).expect("empty").len(), 0);
        let err = reader.slice(9_000..10_001).expect_err("past the end");
        assert!(err.to_string().contains("9000..10001"), "{err}");
        assert!(reader.slice(Range { start: 5, end: 4 }).is_err());

        // Ranges that start and end off page boundaries.
        assert_eq!(
            &reader.slice(4_095..8_193).expect("in range")[..],
            &bytes[4_095..8_193]
        );
        assert_eq!(
            &reader.slice(9_999..10_000).expect("last byte")[..],
            &bytes[9_999..]
        );
        // Several ranges at once, out of order and overlapping, some
        // coalesced into one map: each its own bytes.
        let asked = [9_000..9_500, 10..20, 15..4_000, 3_000_u64..3_000, 0..10_000];
        let got = reader.slices(&asked).expect("in range");
        for (r, b) in asked.iter().zip(&got) {
            assert_eq!(&b[..], &bytes[r.start as usize..r.end as usize], "{r:?}");
        }
        assert!(reader.slices(&[0..10, 5..10_001]).is_err());
        let err = open_planned(&path, 9_999).expect_err("size changed");
        assert!(err.to_string().contains("changed"), "{err}");
        let err = open_planned(&dir.path().join("missing.parquet"), 0).expect_err("missing");
        assert!(err.to_string().contains("missing.parquet"), "{err}");
    }

    struct NoMetadata;

    impl AsyncFileReader for NoMetadata {
        fn get_bytes(&mut self, _: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
            ready(Err(ParquetError::General("not used".into()))).boxed()
        }

        fn get_metadata<'a>(
            &'a mut self,
            _: Option<&'a ArrowReaderOptions>,
        ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
            ready(Err(ParquetError::General("not used".into()))).boxed()
        }
    }
}

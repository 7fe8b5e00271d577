//! Parquet I/O, in one place. Files are written to a temporary name and renamed, so a reader
//! (or an interrupted run) never sees half a file. The run's configuration and the tool version
//! travel in the file's key-value metadata.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use polars::prelude::{DataFrame, KeyValueMetadata, ParquetReader, ParquetWriter, SerReader};

/// The metadata key holding the tool version.
pub const VERSION_KEY: &str = "sift_lab_version";

/// Writes `df` to `path` (atomically), with `metadata` and the tool version.
pub fn write_parquet(df: &mut DataFrame, path: &Path, metadata: &[(String, String)]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut kv: Vec<(String, String)> =
        vec![(VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into())];
    kv.extend(metadata.iter().cloned());
    let tmp = path.with_extension("parquet.partial");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    ParquetWriter::new(file)
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(kv)))
        .finish(df)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Reads a whole Parquet file.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .with_context(|| format!("reading {} as Parquet", path.display()))
}

/// Reads the key-value metadata of a Parquet file.
pub fn read_metadata(path: &Path) -> Result<Vec<(String, String)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = ParquetReader::new(file);
    let meta = reader
        .get_metadata()
        .with_context(|| format!("reading {} as Parquet", path.display()))?;
    Ok(meta
        .key_value_metadata()
        .iter()
        .flatten()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect())
}

//! Writing and reading results, in one place. Every file is written to a temporary name and
//! renamed, so a reader (or an interrupted run) never sees half a file. A Parquet file carries
//! the run's configuration and the tool version in its key-value metadata; `summary.json` files
//! are pretty JSON. Column readers and the comparison of a stored configuration with the
//! current one live here too, so each analysis reads and checks its files the same way.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use polars::prelude::{
    Column, DataFrame, KeyValueMetadata, NamedFrom, ParquetReader, ParquetWriter, SerReader, Series,
};
use serde::Serialize;

/// The metadata key holding the tool version.
pub const VERSION_KEY: &str = "sift_lab_version";

/// The file every run directory holds next to its tables.
pub const SUMMARY_FILE: &str = "summary.json";

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// The temporary name `path` is written under before the rename.
fn partial_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    create_parent(path)?;
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Writes tensors (and string metadata) as a safetensors file, atomically.
pub fn write_safetensors(
    tensors: &HashMap<String, Tensor>,
    meta: HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let views: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<Result<_>>()?;
    create_parent(path)?;
    let tmp = path.with_extension("safetensors.partial");
    safetensors::serialize_to_file(views.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Refuses to write over earlier results: an error naming the first of `paths` that exists,
/// with `advice` (what to do instead, e.g. "choose another --out").
pub fn ensure_absent(paths: &[PathBuf], advice: &str) -> Result<()> {
    if let Some(path) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} already exists; sift-lab does not overwrite earlier results: {advice}",
            path.display()
        );
    }
    Ok(())
}

/// Whether `dir` is missing or holds nothing at all.
pub fn is_empty_dir(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Ok(true);
    }
    let mut entries =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.next().is_none())
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes `df` to `path` (atomically), with `metadata` and the tool version.
pub fn write_parquet(df: &mut DataFrame, path: &Path, metadata: &[(String, String)]) -> Result<()> {
    create_parent(path)?;
    let mut kv: Vec<(String, String)> =
        vec![(VERSION_KEY.into(), env!("CARGO_PKG_VERSION").into())];
    kv.extend(metadata.iter().cloned());
    let tmp = partial_path(path);
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    ParquetWriter::new(file)
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(kv)))
        .finish(df)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// A table column holding one field of each row: `column_of("epoch", &rows, |r| r.epoch as u32)`.
pub fn column_of<'a, R, T>(name: &str, rows: &'a [R], field: impl Fn(&'a R) -> T) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), rows.iter().map(field).collect::<Vec<T>>())
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

/// One value of a file's metadata, or an error naming the file and the key.
pub fn metadata_value(metadata: &[(String, String)], key: &str, path: &Path) -> Result<String> {
    metadata
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .with_context(|| {
            format!(
                "{}: no '{key}' in its metadata (not a file sift-lab wrote for this command?)",
                path.display()
            )
        })
}

/// Column readers. A missing column or a column of another type is an error naming the column;
/// nulls are an error too (sift-lab writes none), so no reader invents a value.
pub mod column {
    use super::*;

    fn no_nulls<T>(name: &str, values: Vec<Option<T>>) -> Result<Vec<T>> {
        if values.iter().any(Option::is_none) {
            bail!("column '{name}' has missing values");
        }
        Ok(values.into_iter().flatten().collect())
    }

    pub fn f64s(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
        let col = df
            .column(name)
            .with_context(|| format!("no column '{name}'"))?;
        no_nulls(
            name,
            col.f64()
                .with_context(|| format!("column '{name}'"))?
                .iter()
                .collect(),
        )
    }

    /// A float column where null stands for "undefined" (e.g. a ratio of an all-zero
    /// gradient): nulls read as NaN.
    pub fn f64s_or_nan(df: &DataFrame, name: &str) -> Result<Vec<f64>> {
        let col = df
            .column(name)
            .with_context(|| format!("no column '{name}'"))?;
        let values = col.f64().with_context(|| format!("column '{name}'"))?;
        Ok(values.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
    }

    pub fn u32s(df: &DataFrame, name: &str) -> Result<Vec<u32>> {
        let col = df
            .column(name)
            .with_context(|| format!("no column '{name}'"))?;
        no_nulls(
            name,
            col.u32()
                .with_context(|| format!("column '{name}'"))?
                .iter()
                .collect(),
        )
    }

    pub fn u64s(df: &DataFrame, name: &str) -> Result<Vec<u64>> {
        let col = df
            .column(name)
            .with_context(|| format!("no column '{name}'"))?;
        no_nulls(
            name,
            col.u64()
                .with_context(|| format!("column '{name}'"))?
                .iter()
                .collect(),
        )
    }

    pub fn strings(df: &DataFrame, name: &str) -> Result<Vec<String>> {
        let col = df
            .column(name)
            .with_context(|| format!("no column '{name}'"))?;
        let values: Vec<Option<String>> = col
            .str()
            .with_context(|| format!("column '{name}'"))?
            .iter()
            .map(|s| s.map(str::to_string))
            .collect();
        no_nulls(name, values)
    }
}

/// One key whose value differs between a stored configuration and the current one.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub key: String,
    pub stored: String,
    pub now: String,
}

/// The top-level keys whose values differ between two configurations (as JSON), sorted.
pub fn config_differences<T: Serialize>(stored: &T, now: &T) -> Result<Vec<Difference>> {
    let (a, b) = (serde_json::to_value(stored)?, serde_json::to_value(now)?);
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let null = serde_json::Value::Null;
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (x, y) = (a.get(k).unwrap_or(&null), b.get(k).unwrap_or(&null));
            (x != y).then(|| Difference {
                key: k.clone(),
                stored: x.to_string(),
                now: y.to_string(),
            })
        })
        .collect())
}

/// The differences as one line: `key: was X, now Y; ...`.
pub fn describe_differences(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(|d| format!("{}: was {}, now {}", d.key, d.stored, d.now))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use polars::prelude::Column;

    #[derive(Serialize)]
    struct Config {
        a: u32,
        b: String,
        c: Option<f64>,
    }

    #[test]
    fn differences_name_each_changed_key_once_in_order() {
        let stored = Config {
            a: 1,
            b: "x".into(),
            c: None,
        };
        let now = Config {
            a: 2,
            b: "x".into(),
            c: Some(0.5),
        };
        let d = config_differences(&stored, &now).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].key.as_str(), d[0].stored.as_str(), d[0].now.as_str()),
            ("a", "1", "2")
        );
        assert_eq!(
            (d[1].key.as_str(), d[1].stored.as_str(), d[1].now.as_str()),
            ("c", "null", "0.5")
        );
        assert_eq!(
            describe_differences(&d),
            "a: was 1, now 2; c: was null, now 0.5"
        );
        assert!(config_differences(&stored, &stored).unwrap().is_empty());
    }

    #[test]
    fn parquet_and_json_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/t.parquet");
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("x".into(), &[1.5f64, -2.0]),
            Column::new("n".into(), &[3u32, 4]),
            Column::new("s".into(), &["a", "b"]),
        ])
        .unwrap();
        write_parquet(&mut df, &path, &[("config".into(), "{}".into())]).unwrap();
        let back = read_parquet(&path).unwrap();
        assert_eq!(column::f64s(&back, "x").unwrap(), vec![1.5, -2.0]);
        assert_eq!(column::u32s(&back, "n").unwrap(), vec![3, 4]);
        assert_eq!(column::strings(&back, "s").unwrap(), vec!["a", "b"]);
        assert!(column::f64s(&back, "n").is_err());
        let err = column::f64s(&back, "missing").unwrap_err().to_string();
        assert!(err.contains("'missing'"), "{err}");
        let meta = read_metadata(&path).unwrap();
        assert_eq!(metadata_value(&meta, "config", &path).unwrap(), "{}");
        assert_eq!(
            metadata_value(&meta, VERSION_KEY, &path).unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        assert!(metadata_value(&meta, "nope", &path).is_err());
        let json = dir.path().join("summary.json");
        write_json(&json, &serde_json::json!({"k": 1})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&json).unwrap(),
            "{\n  \"k\": 1\n}\n"
        );
        // Nothing temporary is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["t.parquet"]);
    }
}

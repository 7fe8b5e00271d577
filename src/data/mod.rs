//! GLUE data: task definitions, TSV loading, tokenisation and batching; `mmlu.rs`: MMLU CSVs;
//! `humaneval.rs`: HumanEval problems; `alpaca.rs`: instruction records.
//!
//! The pipeline is `load_examples` (raw rows) → `encode_examples` (token ids) → `Dataset`
//! (both, plus the pad id) → `Dataset::batches` (padded tensors on a device).

pub mod alpaca;
mod batches;
mod dataset;
mod encode;
pub mod humaneval;
mod location;
pub mod mmlu;
mod tasks;
mod tsv;

use std::path::PathBuf;

pub use batches::{Batch, BatchOrder};
pub use dataset::Dataset;
pub use encode::{encode_examples, pad_token_id, EncodedExample};
pub use location::{glue_dir, SHARED_GLUE_DIR};
pub use tasks::{Split, Task};
pub use tsv::{load_examples, Example, Label};

/// The smallest `--max-len` any command accepts: room for the special tokens of a pair and a
/// few tokens of text.
pub const MIN_MAX_LEN: usize = 8;

/// Refuses a `--max-len` too small to hold any text (the upper bound is the model's, checked by
/// [`crate::model::Pretrained::check_max_len`]).
pub fn check_max_len_flag(max_len: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        max_len >= MIN_MAX_LEN,
        "--max-len {max_len}: must be at least {MIN_MAX_LEN} (the special tokens of a pair take 3)"
    );
    Ok(())
}

/// Everything that can go wrong while finding, reading or parsing GLUE data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown GLUE task '{given}'; valid names: {valid}")]
    UnknownTask { given: String, valid: &'static str },

    #[error("unknown split '{0}'; valid names: train, dev")]
    UnknownSplit(String),

    #[error(
        "GLUE file {path} not found: run the GLUE download script \
         (https://gluebenchmark.com/tasks) into {data_dir}/{task_dir}/, or pass --data-dir",
        path = path.display(),
        data_dir = data_dir.display()
    )]
    MissingFile {
        path: PathBuf,
        data_dir: PathBuf,
        task_dir: &'static str,
    },

    #[error("cannot read {path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}, line {line}: {problem}", path = path.display())]
    Malformed {
        path: PathBuf,
        /// 1-based line number in the file (the header, when there is one, is line 1).
        line: usize,
        problem: String,
    },

    #[error(
        "{path} holds no examples{why}: a split needs at least one row",
        path = path.display()
    )]
    Empty { path: PathBuf, why: &'static str },

    #[error("the tokenizer has no padding token: looked for \"[PAD]\" and \"<pad>\"")]
    NoPadToken,
}

/// Shared fixtures for the tests of this module tree.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The BERT WordPiece tokenizer the tests run against (bert-base-uncased vocabulary:
    /// [CLS] = 101, [SEP] = 102, [PAD] = 0).
    pub fn tokenizer() -> tokenizers::Tokenizer {
        // The default model's tokenizer, resolved through the hub cache as the CLI does.
        let path = std::env::var_os("SIFT_TEST_TOKENIZER")
            .map(PathBuf::from)
            .or_else(|| {
                crate::hub::resolve(crate::hub::DEFAULT_MODEL)
                    .ok()?
                    .tokenizer
            })
            .expect("the default model's tokenizer is not installed: run scripts/setup-model.sh");
        tokenizers::Tokenizer::from_file(&path)
            .unwrap_or_else(|e| panic!("cannot load tokenizer {}: {e}", path.display()))
    }

    /// The real GLUE data (RTE, MRPC, SST-2) shipped with the project.
    pub fn glue_dir() -> PathBuf {
        let dir = std::env::var_os("SIFT_TEST_GLUE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/glue"));
        assert!(
            dir.is_dir(),
            "GLUE data {} not found: set SIFT_TEST_GLUE_DIR to a folder holding RTE/, MRPC/ and SST-2/",
            dir.display()
        );
        dir
    }

    /// A fresh, empty folder under the system temp dir, removed when dropped.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("sift-lab-test-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Writes `contents` to `<root>/<task_dir>/<file>` and returns the path.
        pub fn write(&self, task_dir: &str, file: &str, contents: &str) -> PathBuf {
            let dir = self.0.join(task_dir);
            std::fs::create_dir_all(&dir).expect("create task dir");
            let path = dir.join(file);
            std::fs::write(&path, contents).expect("write test file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

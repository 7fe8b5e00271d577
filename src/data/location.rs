//! Where the GLUE data is: `--data-dir`, or the shared copy beside the repository.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The shared GLUE copy, relative to the working directory (the repository root).
pub const SHARED_GLUE_DIR: &str = "../shared/data/glue";

/// `given` when it is a directory, else the shared copy when it exists; otherwise an error
/// that says how to get GLUE.
pub fn glue_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        if !dir.is_dir() {
            bail!(
                "--data-dir {}: no such directory (it should hold the GLUE task folders, e.g. RTE/train.tsv)",
                dir.display()
            );
        }
        return Ok(dir.to_path_buf());
    }
    let default = PathBuf::from(SHARED_GLUE_DIR);
    if default.is_dir() {
        return Ok(default);
    }
    bail!(
        "no --data-dir given and {SHARED_GLUE_DIR} does not exist. Download GLUE (for example with the \
         GLUE download script, https://gluebenchmark.com/tasks, or `datasets` exported to TSV) so that \
         DIR/RTE/train.tsv etc. exist, and pass --data-dir DIR"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_names_the_flag() {
        let err = glue_dir(Some(Path::new("/no/such/glue")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--data-dir /no/such/glue: no such directory"),
            "{err}"
        );
        let here = std::env::temp_dir();
        assert_eq!(glue_dir(Some(&here)).unwrap(), here);
    }
}

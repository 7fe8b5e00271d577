//! HumanEval (Chen et al. 2021) problems from the release's `HumanEval.jsonl.gz` (or a plain
//! `.jsonl`): one JSON record per line with `task_id`, `prompt`, `entry_point`, `test` and
//! `canonical_solution`. By default the file comes from the hub cache, where
//! `scripts/setup-decoder.sh` installs it as the dataset repo `openai/human-eval`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::hub;

/// The file name of the release inside its hub snapshot.
pub const HUMANEVAL_FILE: &str = "HumanEval.jsonl.gz";

/// One problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub task_id: String,
    /// The function's signature and docstring (what a model completes).
    pub prompt: String,
    /// The name of the function `check` is called on.
    pub entry_point: String,
    /// Python defining `check(candidate)`.
    pub test: String,
    /// A reference body that passes `test`.
    pub canonical_solution: String,
    /// 1-based line of the record in its file.
    #[serde(skip)]
    pub line: usize,
}

/// The installed release: `openai/human-eval`'s snapshot in the hub cache.
pub fn default_file() -> Result<PathBuf> {
    let snapshot = hub::cached_snapshot(hub::HUMANEVAL_DATASET, true).with_context(|| {
        "the HumanEval problems are not installed: run bash scripts/setup-decoder.sh, or pass --humaneval-file PATH"
    })?;
    let path = snapshot.join(HUMANEVAL_FILE);
    if !path.is_file() {
        bail!(
            "{}: missing; run bash scripts/setup-decoder.sh to reinstall it, or pass --humaneval-file PATH",
            path.display()
        );
    }
    Ok(path)
}

/// Every problem of `path` (gzip when the name ends in `.gz`), in file order.
pub fn load(path: &Path) -> Result<Vec<Problem>> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "--humaneval-file {}: cannot open it (pass the HumanEval.jsonl or .jsonl.gz of openai/human-eval)",
            path.display()
        )
    })?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut problems: Vec<Problem> = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| {
            format!(
                "{}:{n}: cannot read the line (a .gz file must be gzip, any other file plain UTF-8 JSON lines)",
                path.display()
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let problem = parse_record(&line).with_context(|| {
            format!(
                "{}:{n}: not a HumanEval record; each line must be a JSON object with string fields task_id, prompt, entry_point, test and canonical_solution (reinstall the file with bash scripts/setup-decoder.sh, or fix the line)",
                path.display()
            )
        })?;
        if let Some(first) = problems.iter().find(|p| p.task_id == problem.task_id) {
            bail!(
                "{}:{n}: task_id {} repeats the record of line {}; each problem must appear once",
                path.display(),
                problem.task_id,
                first.line
            );
        }
        problems.push(Problem { line: n, ..problem });
    }
    if problems.is_empty() {
        bail!(
            "{}: no HumanEval records (an empty file?); pass the HumanEval.jsonl.gz of openai/human-eval",
            path.display()
        );
    }
    Ok(problems)
}

/// One line's record; the error names the missing or mistyped field.
fn parse_record(line: &str) -> Result<Problem> {
    let value: serde_json::Value = serde_json::from_str(line).context("invalid JSON")?;
    let object = value.as_object().context("the line is not a JSON object")?;
    let field = |name: &str| -> Result<String> {
        match object.get(name) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => bail!("field \"{name}\" is not a string"),
            None => bail!("no \"{name}\" field"),
        }
    };
    Ok(Problem {
        task_id: field("task_id")?,
        prompt: field("prompt")?,
        entry_point: field("entry_point")?,
        test: field("test")?,
        canonical_solution: field("canonical_solution")?,
        line: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_has_164_problems() {
        let problems = load(&default_file().unwrap()).unwrap();
        assert_eq!(problems.len(), 164);
        assert_eq!(problems[0].task_id, "HumanEval/0");
        assert_eq!(problems[0].entry_point, "has_close_elements");
        assert_eq!(problems[163].task_id, "HumanEval/163");
        assert_eq!(problems[163].line, 164);
        assert!(problems.iter().all(|p| p.test.contains("def check(")));
    }

    #[test]
    fn broken_records_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"task_id": "T/0", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c): pass", "canonical_solution": "    return 1\n"}"#;
        let missing = r#"{"task_id": "T/1", "prompt": "def g():\n", "entry_point": "g", "canonical_solution": "    return 1\n"}"#;
        let path = dir.path().join("broken.jsonl");
        std::fs::write(&path, format!("{good}\n\n{missing}\n")).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains("broken.jsonl:3") && err.contains("no \"test\" field"),
            "{err}"
        );
        std::fs::write(&path, format!("{good}\n{{\"task_id\": \n")).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains("broken.jsonl:2") && err.contains("invalid JSON"),
            "{err}"
        );
        std::fs::write(&path, format!("{good}\n{good}\n")).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains("broken.jsonl:2") && err.contains("line 1"),
            "{err}"
        );
        // A plain file named .gz is not gzip.
        let gz = dir.path().join("plain.jsonl.gz");
        std::fs::write(&gz, format!("{good}\n")).unwrap();
        let err = format!("{:#}", load(&gz).unwrap_err());
        assert!(
            err.contains("plain.jsonl.gz:1") && err.contains("gzip"),
            "{err}"
        );
        // The good record alone reads back.
        std::fs::write(&path, format!("{good}\n")).unwrap();
        let problems = load(&path).unwrap();
        assert_eq!((problems[0].task_id.as_str(), problems[0].line), ("T/0", 1));
    }
}

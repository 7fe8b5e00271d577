//! MMLU (Hendrycks et al. 2021) multiple-choice questions from CSV files in either common layout:
//! the original release's header-less `question,A,B,C,D,letter`, or
//! `question,choice0,choice1,choice2,choice3,answer` with a header and a 0-based answer index.
//! A file's subject is its name without `_test.csv` / `_dev.csv` / `_val.csv`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The four answer letters, in choice order.
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub subject: String,
    pub file: PathBuf,
    /// 1-based line of the record's start in `file`.
    pub line: u64,
    pub question: String,
    pub choices: [String; 4],
    /// 0-based index of the right choice.
    pub answer: usize,
}

impl Question {
    /// The standard zero-shot prompt; the model's next token after it is the answer letter.
    pub fn prompt(&self) -> String {
        let mut text = format!(
            "The following are multiple choice questions (with answers) about {}.\n\n{}\n",
            self.subject.replace('_', " "),
            self.question
        );
        for (letter, choice) in LETTERS.iter().zip(&self.choices) {
            text += &format!("{letter}. {choice}\n");
        }
        text + "Answer:"
    }
}

/// The CSV files of `dir` to read for `split`: `dir/SPLIT/*.csv` when that folder exists (the
/// release's layout), else `dir/*.csv`; sorted by name.
pub fn files(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let folder = if dir.join(split).is_dir() {
        dir.join(split)
    } else {
        dir.to_path_buf()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .with_context(|| format!("--mmlu {}: cannot read the folder", folder.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "--mmlu {}: no .csv files in {} (expected SUBJECT_{split}.csv files, or a {split}/ folder of them)",
            dir.display(),
            folder.display()
        );
    }
    Ok(files)
}

/// The subject of an MMLU file name: `high_school_biology_test.csv` → `high_school_biology`.
pub fn subject_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for suffix in ["_test", "_dev", "_val", "_validation", "_train"] {
        if let Some(subject) = stem.strip_suffix(suffix) {
            return subject.to_string();
        }
    }
    stem
}

/// Every question of every file of `dir` for `split`.
pub fn load(dir: &Path, split: &str) -> Result<Vec<Question>> {
    let mut questions = Vec::new();
    for file in files(dir, split)? {
        questions.extend(read_csv(&file)?);
    }
    Ok(questions)
}

/// The questions of one CSV file, in either layout (a first record that reads
/// `question,choice0,choice1,choice2,choice3,answer` is a header).
pub fn read_csv(path: &Path) -> Result<Vec<Question>> {
    let subject = subject_of(path);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut questions = Vec::new();
    let mut indexed = false;
    for (n, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: not valid CSV", path.display()))?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let at = || format!("{}:{line}", path.display());
        let fields: Vec<&str> = record.iter().collect();
        if n == 0 && is_header(&fields) {
            indexed = true;
            continue;
        }
        if fields.len() != 6 {
            bail!(
                "{}: {} fields; an MMLU row has 6 (question, four choices, answer)",
                at(),
                fields.len()
            );
        }
        let answer_field = fields[5].trim();
        let answer = if indexed {
            match answer_field.parse::<usize>() {
                Ok(i) if i < 4 => i,
                _ => bail!(
                    "{}: answer {answer_field:?} is not a choice index 0-3 (this file has a header, so answers are 0-based indices)",
                    at()
                ),
            }
        } else {
            match LETTERS.iter().position(|l| l.eq_ignore_ascii_case(answer_field)) {
                Some(i) => i,
                None => bail!(
                    "{}: answer {answer_field:?} is not a letter A-D (a header-less file is the original layout, answers as letters)",
                    at()
                ),
            }
        };
        questions.push(Question {
            subject: subject.clone(),
            file: path.to_path_buf(),
            line,
            question: fields[0].to_string(),
            choices: [1, 2, 3, 4].map(|i| fields[i].to_string()),
            answer,
        });
    }
    if questions.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(questions)
}

fn is_header(fields: &[&str]) -> bool {
    fields.len() == 6
        && fields[0].trim().eq_ignore_ascii_case("question")
        && fields[5].trim().eq_ignore_ascii_case("answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn both_layouts_read_the_same_questions() {
        let dir = tempfile::tempdir().unwrap();
        let original = write(
            dir.path(),
            "anatomy_test.csv",
            "What is 2+2?,3,4,5,6,B\n\"A \"\"quoted\"\"\nquestion\",w,x,y,z,d\n",
        );
        let indexed = write(
            dir.path(),
            "anatomy_dev.csv",
            "question,choice0,choice1,choice2,choice3,answer\nWhat is 2+2?,3,4,5,6,1\n\"A \"\"quoted\"\"\nquestion\",w,x,y,z,3\n",
        );
        let a = read_csv(&original).unwrap();
        let b = read_csv(&indexed).unwrap();
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (&x.question, &x.choices, x.answer),
                (&y.question, &y.choices, y.answer)
            );
            assert_eq!(x.subject, "anatomy");
        }
        assert_eq!(a[0].answer, 1);
        assert_eq!(a[1].answer, 3);
        assert_eq!(a[1].question, "A \"quoted\"\nquestion");
        assert_eq!((a[0].line, a[1].line), (1, 2));
        assert_eq!((b[0].line, b[1].line), (2, 3));
        assert_eq!(
            a[0].prompt(),
            "The following are multiple choice questions (with answers) about anatomy.\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
        );
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "x_test.csv", "q,a,b,c,d,A\nq2,a,b,c,d,E\n");
        let err = format!("{:#}", read_csv(&path).unwrap_err());
        assert!(
            err.contains("x_test.csv:2") && err.contains("\"E\""),
            "{err}"
        );
        let path = write(
            dir.path(),
            "y_test.csv",
            "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,4\n",
        );
        let err = format!("{:#}", read_csv(&path).unwrap_err());
        assert!(err.contains("y_test.csv:2") && err.contains("0-3"), "{err}");
        let path = write(dir.path(), "z_test.csv", "q,a,b,c,A\n");
        let err = format!("{:#}", read_csv(&path).unwrap_err());
        assert!(
            err.contains("z_test.csv:1") && err.contains("5 fields"),
            "{err}"
        );
    }

    #[test]
    fn shared_subjects_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mmlu");
        let questions = load(&dir, "test").unwrap();
        assert_eq!(questions.len(), 152 + 100 + 310 + 234);
        let subjects: std::collections::BTreeSet<_> =
            questions.iter().map(|q| q.subject.as_str()).collect();
        assert_eq!(
            subjects.into_iter().collect::<Vec<_>>(),
            [
                "astronomy",
                "computer_security",
                "high_school_biology",
                "marketing"
            ]
        );
    }
}

//! The GLUE tasks: names, folders, label sets and TSV column layouts.

use std::fmt;
use std::str::FromStr;

use super::DataError;

/// One GLUE task. MNLI's two dev sets are separate tasks because they are evaluated separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    Cola,
    Sst2,
    Mrpc,
    Qqp,
    Stsb,
    Mnli,
    MnliMismatched,
    Qnli,
    Rte,
    Wnli,
}

/// Which file of a task to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Dev,
}

/// Where a row's label lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabelColumn {
    At(usize),
    /// MNLI: the dev files carry five annotator labels before the gold one, so the gold label
    /// is whatever column comes last (as in HF's `MnliProcessor`).
    Last,
}

/// How a label cell is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LabelFormat {
    /// A class index written as a decimal number ("0", "1").
    Index,
    /// A class name from `Task::label_names`; the class id is its position there.
    Named,
    /// A real-valued similarity score (STS-B, 0–5).
    Score,
}

/// The TSV layout of a task's files (0-based columns), as in SPEC.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub has_header: bool,
    pub text_a: usize,
    pub text_b: Option<usize>,
    pub label: LabelColumn,
    pub label_format: LabelFormat,
}

impl Task {
    pub const ALL: [Task; 10] = [
        Task::Cola,
        Task::Sst2,
        Task::Mrpc,
        Task::Qqp,
        Task::Stsb,
        Task::Mnli,
        Task::MnliMismatched,
        Task::Qnli,
        Task::Rte,
        Task::Wnli,
    ];

    const VALID_NAMES: &'static str =
        "cola, sst2 (sst-2), mrpc, qqp, stsb (sts-b), mnli (mnli-m), mnli-mm, qnli, rte, wnli";

    /// Parses a task name, case-insensitively, accepting the usual GLUE spellings.
    pub fn parse(name: &str) -> Result<Task, DataError> {
        let task = match name.trim().to_ascii_lowercase().as_str() {
            "cola" => Task::Cola,
            "sst2" | "sst-2" => Task::Sst2,
            "mrpc" => Task::Mrpc,
            "qqp" => Task::Qqp,
            "stsb" | "sts-b" => Task::Stsb,
            "mnli" | "mnli-m" => Task::Mnli,
            "mnli-mm" => Task::MnliMismatched,
            "qnli" => Task::Qnli,
            "rte" => Task::Rte,
            "wnli" => Task::Wnli,
            _ => {
                return Err(DataError::UnknownTask {
                    given: name.to_string(),
                    valid: Self::VALID_NAMES,
                })
            }
        };
        Ok(task)
    }

    /// Canonical lowercase name, accepted by `parse`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Cola => "cola",
            Task::Sst2 => "sst2",
            Task::Mrpc => "mrpc",
            Task::Qqp => "qqp",
            Task::Stsb => "stsb",
            Task::Mnli => "mnli",
            Task::MnliMismatched => "mnli-mm",
            Task::Qnli => "qnli",
            Task::Rte => "rte",
            Task::Wnli => "wnli",
        }
    }

    /// The task's folder in a GLUE download.
    pub fn dir_name(self) -> &'static str {
        match self {
            Task::Cola => "CoLA",
            Task::Sst2 => "SST-2",
            Task::Mrpc => "MRPC",
            Task::Qqp => "QQP",
            Task::Stsb => "STS-B",
            Task::Mnli | Task::MnliMismatched => "MNLI",
            Task::Qnli => "QNLI",
            Task::Rte => "RTE",
            Task::Wnli => "WNLI",
        }
    }

    /// Number of model outputs: 1 for STS-B's regression, otherwise the number of classes.
    pub fn num_labels(self) -> usize {
        self.label_names().len()
    }

    pub fn is_regression(self) -> bool {
        self == Task::Stsb
    }

    /// File name of a split inside `dir_name()`.
    pub fn split_file(self, split: Split) -> &'static str {
        match (self, split) {
            (_, Split::Train) => "train.tsv",
            (Task::Mnli, Split::Dev) => "dev_matched.tsv",
            (Task::MnliMismatched, Split::Dev) => "dev_mismatched.tsv",
            (_, Split::Dev) => "dev.tsv",
        }
    }

    /// Human-readable class names, indexed by class id (one entry, "score", for STS-B).
    /// For RTE, QNLI and MNLI these are also the strings in the label column.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Task::Cola => &["unacceptable", "acceptable"],
            Task::Sst2 => &["negative", "positive"],
            Task::Mrpc => &["not_equivalent", "equivalent"],
            Task::Qqp => &["not_duplicate", "duplicate"],
            Task::Stsb => &["score"],
            // The order of HF's GLUE processors, so that checkpoints fine-tuned there agree.
            Task::Mnli | Task::MnliMismatched => &["entailment", "neutral", "contradiction"],
            Task::Qnli | Task::Rte => &["entailment", "not_entailment"],
            Task::Wnli => &["not_entailment", "entailment"],
        }
    }

    pub(crate) fn layout(self) -> Layout {
        use LabelColumn::{At, Last};
        use LabelFormat::{Index, Named, Score};
        let (has_header, text_a, text_b, label, label_format) = match self {
            Task::Cola => (false, 3, None, At(1), Index),
            Task::Sst2 => (true, 0, None, At(1), Index),
            Task::Mrpc => (true, 3, Some(4), At(0), Index),
            Task::Qqp => (true, 3, Some(4), At(5), Index),
            Task::Stsb => (true, 7, Some(8), At(9), Score),
            Task::Mnli | Task::MnliMismatched => (true, 8, Some(9), Last, Named),
            Task::Qnli | Task::Rte => (true, 1, Some(2), At(3), Named),
            Task::Wnli => (true, 1, Some(2), At(3), Index),
        };
        Layout {
            has_header,
            text_a,
            text_b,
            label,
            label_format,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::parse(s)
    }
}

impl Split {
    pub fn parse(name: &str) -> Result<Split, DataError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "dev" => Ok(Split::Dev),
            _ => Err(DataError::UnknownSplit(name.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Split::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_every_spelling_case_insensitively() {
        let cases = [
            ("cola", Task::Cola),
            ("SST2", Task::Sst2),
            ("sst-2", Task::Sst2),
            ("MRPC", Task::Mrpc),
            ("qqp", Task::Qqp),
            ("stsb", Task::Stsb),
            ("STS-B", Task::Stsb),
            ("mnli", Task::Mnli),
            ("MNLI-m", Task::Mnli),
            ("mnli-MM", Task::MnliMismatched),
            ("qnli", Task::Qnli),
            ("Rte", Task::Rte),
            ("wnli", Task::Wnli),
        ];
        for (name, task) in cases {
            assert_eq!(Task::parse(name).unwrap(), task, "{name}");
        }
    }

    #[test]
    fn canonical_names_round_trip() {
        for task in Task::ALL {
            assert_eq!(Task::parse(task.name()).unwrap(), task);
            assert_eq!(task.to_string(), task.name());
        }
    }

    #[test]
    fn unknown_task_lists_valid_names() {
        let msg = Task::parse("squad").unwrap_err().to_string();
        assert!(msg.contains("squad"), "{msg}");
        for name in [
            "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli-mm", "qnli", "rte", "wnli",
        ] {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
    }

    #[test]
    fn label_counts_and_files() {
        assert_eq!(Task::Stsb.num_labels(), 1);
        assert!(Task::Stsb.is_regression());
        assert_eq!(Task::Mnli.num_labels(), 3);
        assert_eq!(Task::MnliMismatched.num_labels(), 3);
        for task in Task::ALL {
            if !matches!(task, Task::Stsb | Task::Mnli | Task::MnliMismatched) {
                assert_eq!(task.num_labels(), 2, "{task}");
                assert!(!task.is_regression());
            }
            assert_eq!(task.split_file(Split::Train), "train.tsv");
        }
        assert_eq!(Task::Mnli.split_file(Split::Dev), "dev_matched.tsv");
        assert_eq!(
            Task::MnliMismatched.split_file(Split::Dev),
            "dev_mismatched.tsv"
        );
        assert_eq!(Task::Rte.split_file(Split::Dev), "dev.tsv");
        assert_eq!(Task::Sst2.dir_name(), "SST-2");
        assert_eq!(Task::MnliMismatched.dir_name(), "MNLI");
    }

    #[test]
    fn split_parse() {
        assert_eq!(Split::parse("train").unwrap(), Split::Train);
        assert_eq!(Split::parse("Dev").unwrap(), Split::Dev);
        let msg = Split::parse("test").unwrap_err().to_string();
        assert!(
            msg.contains("test") && msg.contains("train") && msg.contains("dev"),
            "{msg}"
        );
    }
}

// Configurations store a task and a split by their canonical names, so a stored run's JSON
// reads the same as the command line that made it ("rte", "dev").
macro_rules! serde_by_name {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                <$ty>::parse(&name).map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_by_name!(Task);
serde_by_name!(Split);

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn tasks_and_splits_serialize_as_their_names() {
        assert_eq!(
            serde_json::to_string(&Task::MnliMismatched).unwrap(),
            "\"mnli-mm\""
        );
        assert_eq!(
            serde_json::from_str::<Task>("\"SST-2\"").unwrap(),
            Task::Sst2
        );
        assert_eq!(serde_json::to_string(&Split::Dev).unwrap(), "\"dev\"");
        let err = serde_json::from_str::<Task>("\"glue\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("glue"), "{err}");
    }
}

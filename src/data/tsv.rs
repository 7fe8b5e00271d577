//! Reading GLUE TSV files into `Example`s.
//!
//! GLUE files are read the way HF's processors read them (`csv` with `quotechar=None`): a row is
//! the line split on every tab, with no quote handling, because sentences contain stray quotes.

use std::path::Path;

use super::tasks::{LabelColumn, LabelFormat, Layout};
use super::{DataError, Split, Task};

/// A gold label: a class id, or STS-B's similarity score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    Class(u32),
    Score(f32),
}

/// One row of a GLUE file.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text_a: String,
    /// The second sentence, for pair tasks.
    pub text_b: Option<String>,
    pub label: Label,
    /// 1-based line in the file, so problems can be traced back to the source.
    pub line: usize,
}

/// STS-B scores are averaged annotator ratings on this scale; anything outside it means the
/// wrong column was read.
const SCORE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=5.0;

/// Loads every example of `task`'s `split` from `data_dir/<TaskDir>/<file>.tsv`, in file order.
pub fn load_examples(data_dir: &Path, task: Task, split: Split) -> Result<Vec<Example>, DataError> {
    let path = data_dir.join(task.dir_name()).join(task.split_file(split));
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path,
            data_dir: data_dir.to_path_buf(),
            task_dir: task.dir_name(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|source| DataError::Io {
        path: path.clone(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| not_utf8(&bytes, e, &path))?;
    parse_tsv(text, task, &path)
}

/// Where the first byte that is not UTF-8 sits: its line (1-based) and byte column.
fn not_utf8(bytes: &[u8], error: std::str::Utf8Error, path: &Path) -> DataError {
    let at = error.valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    DataError::Malformed {
        path: path.to_path_buf(),
        line,
        problem: format!(
            "byte 0x{:02x} at column {column} is not UTF-8; GLUE files are UTF-8 text (re-save the file as UTF-8)",
            bytes[at]
        ),
    }
}

/// Parses the contents of one of `task`'s files; `path` is only used in error messages.
pub(crate) fn parse_tsv(text: &str, task: Task, path: &Path) -> Result<Vec<Example>, DataError> {
    let layout = task.layout();
    // MRPC's files start with a byte-order mark; it is not part of the first cell.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let skip = usize::from(layout.has_header);
    text.lines()
        .enumerate()
        .skip(skip)
        .map(|(i, raw)| {
            let line = i + 1;
            parse_row(raw.trim_end_matches('\r'), task, &layout)
                .map_err(|problem| DataError::Malformed {
                    path: path.to_path_buf(),
                    line,
                    problem,
                })
                .map(|(text_a, text_b, label)| Example {
                    text_a,
                    text_b,
                    label,
                    line,
                })
        })
        .collect()
}

type Row = (String, Option<String>, Label);

/// Parses one data row; the error says what is wrong and what was expected.
fn parse_row(raw: &str, task: Task, layout: &Layout) -> Result<Row, String> {
    let cells: Vec<&str> = raw.split('\t').collect();
    let needed = columns_needed(layout);
    if raw.is_empty() || cells.len() < needed {
        return Err(format!(
            "found {} tab-separated column(s), expected at least {needed} for {} ({})",
            if raw.is_empty() { 0 } else { cells.len() },
            task.dir_name(),
            describe_layout(layout),
        ));
    }
    let text_a = text_cell(&cells, layout.text_a, "text a")?;
    let text_b = layout
        .text_b
        .map(|col| text_cell(&cells, col, "text b"))
        .transpose()?;
    let label_col = match layout.label {
        LabelColumn::At(col) => col,
        LabelColumn::Last => cells.len() - 1,
    };
    let label = parse_label(cells[label_col], label_col, task, layout.label_format)?;
    Ok((text_a, text_b, label))
}

/// Minimum number of cells a row must have.
fn columns_needed(layout: &Layout) -> usize {
    let last_text = layout.text_b.unwrap_or(layout.text_a).max(layout.text_a);
    match layout.label {
        LabelColumn::At(col) => col.max(last_text) + 1,
        // The label must come after the texts, not be one of them.
        LabelColumn::Last => last_text + 2,
    }
}

fn describe_layout(layout: &Layout) -> String {
    let mut parts = vec![format!("text a in column {}", layout.text_a)];
    if let Some(col) = layout.text_b {
        parts.push(format!("text b in column {col}"));
    }
    parts.push(match layout.label {
        LabelColumn::At(col) => format!("label in column {col}"),
        LabelColumn::Last => "label in the last column".to_string(),
    });
    format!("0-based: {}", parts.join(", "))
}

fn text_cell(cells: &[&str], col: usize, what: &str) -> Result<String, String> {
    let text = cells[col];
    if text.trim().is_empty() {
        return Err(format!(
            "{what} (column {col}) is empty; expected a sentence"
        ));
    }
    Ok(text.to_string())
}

fn parse_label(cell: &str, col: usize, task: Task, format: LabelFormat) -> Result<Label, String> {
    let value = cell.trim();
    match format {
        LabelFormat::Index => value
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < task.num_labels())
            .map(Label::Class)
            .ok_or_else(|| {
                let valid: Vec<String> = (0..task.num_labels()).map(|i| i.to_string()).collect();
                format!(
                    "label '{value}' (column {col}) is not valid; expected one of {}",
                    valid.join(", ")
                )
            }),
        LabelFormat::Named => task
            .label_names()
            .iter()
            .position(|&name| name == value)
            .map(|id| Label::Class(id as u32))
            .ok_or_else(|| {
                format!(
                    "label '{value}' (column {col}) is not valid; expected one of {}",
                    task.label_names().join(", ")
                )
            }),
        LabelFormat::Score => value
            .parse::<f32>()
            .ok()
            .filter(|s| SCORE_RANGE.contains(s))
            .map(Label::Score)
            .ok_or_else(|| {
                format!(
                    "label '{value}' (column {col}) is not valid; expected a similarity score \
                     between {} and {}",
                    SCORE_RANGE.start(),
                    SCORE_RANGE.end()
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::{glue_dir, TempDir};

    fn class_counts(examples: &[Example], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for ex in examples {
            match ex.label {
                Label::Class(c) => counts[c as usize] += 1,
                Label::Score(s) => panic!("unexpected score {s}"),
            }
        }
        counts
    }

    #[test]
    fn real_record_counts() {
        let dir = glue_dir();
        let expected = [
            (Task::Rte, 2490, 277),
            (Task::Mrpc, 3668, 408),
            (Task::Sst2, 67349, 872),
        ];
        for (task, train, dev) in expected {
            let tr = load_examples(&dir, task, Split::Train).unwrap();
            let dv = load_examples(&dir, task, Split::Dev).unwrap();
            assert_eq!((tr.len(), dv.len()), (train, dev), "{task}");
            // Pair tasks carry a second sentence, single-sentence tasks none.
            let is_pair = task != Task::Sst2;
            assert!(tr.iter().chain(&dv).all(|e| e.text_b.is_some() == is_pair));
        }
    }

    #[test]
    fn real_mrpc_dev_labels_and_bom() {
        let examples = load_examples(&glue_dir(), Task::Mrpc, Split::Dev).unwrap();
        // 279 paraphrases (1), 129 not (0).
        assert_eq!(class_counts(&examples, 2), vec![129, 279]);
        // The header (line 1, with its BOM) is skipped; the first data row is line 2.
        let first = &examples[0];
        assert_eq!(first.line, 2);
        assert_eq!(first.label, Label::Class(1));
        assert!(first
            .text_a
            .starts_with("He said the foodservice pie business"));
        assert!(first
            .text_b
            .as_deref()
            .unwrap()
            .starts_with("\"The foodservice pie"));
        assert_eq!(examples.last().unwrap().line, 409);
    }

    #[test]
    fn real_rte_string_labels() {
        let examples = load_examples(&glue_dir(), Task::Rte, Split::Train).unwrap();
        // entailment = 0: 1249, not_entailment = 1: 1241 (counted with cut | sort | uniq).
        assert_eq!(class_counts(&examples, 2), vec![1249, 1241]);
        assert_eq!(examples[0].label, Label::Class(1));
        assert_eq!(
            examples[0].text_b.as_deref(),
            Some("Weapons of Mass Destruction Found in Iraq.")
        );
    }

    #[test]
    fn real_sst2_first_row() {
        let examples = load_examples(&glue_dir(), Task::Sst2, Split::Train).unwrap();
        assert_eq!(
            examples[0].text_a,
            "hide new secretions from the parental units "
        );
        assert_eq!(examples[0].label, Label::Class(0));
        assert_eq!(examples[0].line, 2);
    }

    #[test]
    fn a_byte_that_is_not_utf8_is_located_by_line_and_column() {
        let tmp = TempDir::new("not-utf8");
        let mut body = b"index\tsentence1\tsentence2\tlabel\n0\tA man sleeps.\tA man rests.\tentailment\n1\tCaf".to_vec();
        body.push(0xe9); // Latin-1 é
        body.extend_from_slice(b" noir.\tA drink.\tentailment\n");
        std::fs::create_dir_all(tmp.path().join("RTE")).unwrap();
        std::fs::write(tmp.path().join("RTE/dev.tsv"), body).unwrap();
        let msg = load_examples(tmp.path(), Task::Rte, Split::Dev)
            .unwrap_err()
            .to_string();
        // Line 3, after "1\tCaf": column 6.
        assert!(
            msg.contains("RTE/dev.tsv, line 3: byte 0xe9 at column 6 is not UTF-8"),
            "{msg}"
        );
    }

    #[test]
    fn too_few_columns_names_file_and_line() {
        let tmp = TempDir::new("few-cols");
        let body = "index\tsentence1\tsentence2\tlabel\n\
                    0\tA man sleeps.\tA man rests.\tentailment\n\
                    1\tOnly two\tcolumns\n";
        tmp.write("RTE", "dev.tsv", body);
        let msg = load_examples(tmp.path(), Task::Rte, Split::Dev)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("RTE/dev.tsv"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(
            msg.contains("found 3") && msg.contains("at least 4"),
            "{msg}"
        );
    }

    #[test]
    fn blank_line_is_reported() {
        let tmp = TempDir::new("blank");
        tmp.write(
            "SST-2",
            "train.tsv",
            "sentence\tlabel\ngood .\t1\n\nbad .\t0\n",
        );
        let msg = load_examples(tmp.path(), Task::Sst2, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 3") && msg.contains("found 0"), "{msg}");
    }

    #[test]
    fn bad_labels_are_reported() {
        let tmp = TempDir::new("bad-label");
        tmp.write(
            "RTE",
            "train.tsv",
            "index\ts1\ts2\tlabel\n0\tA.\tB.\tmaybe\n",
        );
        let msg = load_examples(tmp.path(), Task::Rte, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("RTE/train.tsv") && msg.contains("line 2"),
            "{msg}"
        );
        assert!(
            msg.contains("'maybe'") && msg.contains("entailment, not_entailment"),
            "{msg}"
        );

        tmp.write(
            "SST-2",
            "dev.tsv",
            "sentence\tlabel\nfine .\t1\nawful .\t2\n",
        );
        let msg = load_examples(tmp.path(), Task::Sst2, Split::Dev)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 3") && msg.contains("'2'") && msg.contains("0, 1"),
            "{msg}"
        );

        tmp.write(
            "STS-B",
            "dev.tsv",
            "h\nx\tx\tx\tx\tx\tx\tx\tA.\tB.\tseven\n",
        );
        let msg = load_examples(tmp.path(), Task::Stsb, Split::Dev)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("between 0 and 5"),
            "{msg}"
        );
    }

    #[test]
    fn empty_text_is_reported() {
        let tmp = TempDir::new("empty-text");
        tmp.write(
            "MRPC",
            "train.tsv",
            "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA.\t \n",
        );
        let msg = load_examples(tmp.path(), Task::Mrpc, Split::Train)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("text b (column 4) is empty"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_says_how_to_get_glue() {
        let tmp = TempDir::new("missing");
        let msg = load_examples(tmp.path(), Task::Qnli, Split::Dev)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("QNLI/dev.tsv"), "{msg}");
        assert!(
            msg.contains("gluebenchmark.com") && msg.contains("--data-dir"),
            "{msg}"
        );
    }

    #[test]
    fn cola_has_no_header() {
        let tmp = TempDir::new("cola");
        tmp.write(
            "CoLA",
            "train.tsv",
            "gj04\t1\t\tOur friends won't buy this analysis.\r\ngj04\t0\t*\tThey drank the pub.\r\n",
        );
        let ex = load_examples(tmp.path(), Task::Cola, Split::Train).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].text_a, "Our friends won't buy this analysis.");
        assert_eq!((ex[0].label, ex[0].line), (Label::Class(1), 1));
        assert_eq!((ex[1].label, ex[1].text_b.clone()), (Label::Class(0), None));
        assert_eq!(ex[1].text_a, "They drank the pub.");
    }

    #[test]
    fn stsb_float_labels() {
        let tmp = TempDir::new("stsb");
        let body = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n\
                    0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n\
                    1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\tA man is playing a bamboo flute.\t3.800\n";
        tmp.write("STS-B", "dev.tsv", body);
        let ex = load_examples(tmp.path(), Task::Stsb, Split::Dev).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].label, Label::Score(5.0));
        assert_eq!(ex[1].label, Label::Score(3.8));
        assert_eq!(
            ex[1].text_b.as_deref(),
            Some("A man is playing a bamboo flute.")
        );
    }

    #[test]
    fn mnli_label_is_last_column() {
        let tmp = TempDir::new("mnli");
        // dev files: 10 fixed columns, five annotator labels, then the gold label (16 columns).
        let header = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n";
        let row1 = "0\t1\t1e\tgov\t(b)\t(b)\t(p)\t(p)\tThe cat sat.\tA cat sat.\tentailment\tneutral\tentailment\tentailment\tentailment\tentailment\n";
        let row2 = "1\t2\t2c\tgov\t(b)\t(b)\t(p)\t(p)\tIt rained.\tIt was dry.\tcontradiction\tcontradiction\tneutral\tcontradiction\tcontradiction\tcontradiction\n";
        tmp.write(
            "MNLI",
            "dev_mismatched.tsv",
            &format!("{header}{row1}{row2}"),
        );
        // train: 10 fixed columns, label1 and gold_label (12 columns).
        let train =
            "h\n0\t1\t1n\tgov\t(b)\t(b)\t(p)\t(p)\tHe left.\tHe left early.\tneutral\tneutral\n";
        tmp.write("MNLI", "train.tsv", train);

        let dev = load_examples(tmp.path(), Task::MnliMismatched, Split::Dev).unwrap();
        assert_eq!(dev[0].label, Label::Class(0));
        assert_eq!(dev[1].label, Label::Class(2));
        assert_eq!(dev[1].text_a, "It rained.");
        assert_eq!(dev[1].text_b.as_deref(), Some("It was dry."));
        let tr = load_examples(tmp.path(), Task::Mnli, Split::Train).unwrap();
        assert_eq!(tr[0].label, Label::Class(1));
        // The matched task reads dev_matched.tsv, which is absent here.
        let err = load_examples(tmp.path(), Task::Mnli, Split::Dev).unwrap_err();
        assert!(err.to_string().contains("dev_matched.tsv"), "{err}");
    }

    #[test]
    fn qqp_layout() {
        let tmp = TempDir::new("qqp");
        let body = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n\
                    133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n\
                    402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n";
        tmp.write("QQP", "train.tsv", body);
        let ex = load_examples(tmp.path(), Task::Qqp, Split::Train).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].label, Label::Class(0));
        assert_eq!(ex[1].label, Label::Class(1));
        assert_eq!(ex[1].text_a, "How do I control my horny emotions?");
        assert_eq!(
            ex[1].text_b.as_deref(),
            Some("How do you control your horniness?")
        );
    }

    #[test]
    fn qnli_layout() {
        let tmp = TempDir::new("qnli");
        let body = "index\tquestion\tsentence\tlabel\n\
                    0\tWhat came into force after the new constitution was herald?\tAs of that day, the new constitution heralding the Second Republic came into force.\tentailment\n\
                    1\tWhat is the first major city in the stream of the Rhine?\tThe most important tributaries in this area are the Ill below of Strasbourg.\tnot_entailment\n";
        tmp.write("QNLI", "dev.tsv", body);
        let ex = load_examples(tmp.path(), Task::Qnli, Split::Dev).unwrap();
        assert_eq!(ex[0].label, Label::Class(0));
        assert_eq!(ex[1].label, Label::Class(1));
        assert!(ex[0].text_a.starts_with("What came into force"));
        assert!(ex[0]
            .text_b
            .as_deref()
            .unwrap()
            .starts_with("As of that day"));
    }

    #[test]
    fn wnli_layout() {
        let tmp = TempDir::new("wnli");
        let body = "index\tsentence1\tsentence2\tlabel\n\
                    0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot had a hole.\t1\n\
                    1\tJohn couldn't see the stage with Billy in front of him because he is so short.\tJohn is so short.\t1\n\
                    2\tThe police arrested all of the gang members.\tThe police were trying to stop the police.\t0\n";
        tmp.write("WNLI", "train.tsv", body);
        let ex = load_examples(tmp.path(), Task::Wnli, Split::Train).unwrap();
        let labels: Vec<Label> = ex.iter().map(|e| e.label).collect();
        assert_eq!(
            labels,
            vec![Label::Class(1), Label::Class(1), Label::Class(0)]
        );
        assert_eq!(
            ex[2].text_b.as_deref(),
            Some("The police were trying to stop the police.")
        );
        assert_eq!(ex[2].line, 4);
    }
}

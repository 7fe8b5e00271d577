//! GLUE task metrics, defined as scikit-learn / scipy compute them so our numbers are
//! comparable with published ones.

use std::collections::BTreeMap;

use crate::data::{Label, Task};

/// Fraction of positions where `pred == label` (NaN for empty input).
pub fn accuracy(pred: &[u32], label: &[u32]) -> f64 {
    assert_same_len(pred.len(), label.len());
    let correct = pred.iter().zip(label).filter(|(p, l)| p == l).count();
    correct as f64 / pred.len() as f64
}

/// Binary confusion counts with class 1 as positive (any other value is negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Confusion {
    tp: u64,
    fp: u64,
    tn: u64,
    fn_: u64,
}

impl Confusion {
    fn new(pred: &[u32], label: &[u32]) -> Self {
        assert_same_len(pred.len(), label.len());
        let mut c = Confusion::default();
        for (&p, &l) in pred.iter().zip(label) {
            match (p == 1, l == 1) {
                (true, true) => c.tp += 1,
                (true, false) => c.fp += 1,
                (false, false) => c.tn += 1,
                (false, true) => c.fn_ += 1,
            }
        }
        c
    }
}

/// F1 of the positive class 1: 2·TP / (2·TP + FP + FN); 0 when there is no true positive
/// (scikit-learn's `zero_division` default).
pub fn f1_binary(pred: &[u32], label: &[u32]) -> f64 {
    let c = Confusion::new(pred, label);
    if c.tp == 0 {
        return 0.0;
    }
    2.0 * c.tp as f64 / (2 * c.tp + c.fp + c.fn_) as f64
}

/// Matthews correlation coefficient of binary predictions; 0 when any marginal is empty
/// (e.g. constant predictions), as scikit-learn returns.
pub fn matthews_corrcoef(pred: &[u32], label: &[u32]) -> f64 {
    let c = Confusion::new(pred, label);
    let [tp, fp, tn, fn_] = [c.tp, c.fp, c.tn, c.fn_].map(|v| v as f64);
    // In f64 throughout: the product of four counts overflows u64 for large sets.
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        return 0.0;
    }
    (tp * tn - fp * fn_) / denom
}

/// Pearson correlation; NaN when either input is constant (as scipy, which also warns).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_same_len(x.len(), y.len());
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mean_x, b - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    // Rounding can push |r| a hair above 1 for perfectly correlated inputs.
    (sxy / (sxx * syy).sqrt()).clamp(-1.0, 1.0)
}

/// Spearman rank correlation: Pearson of 1-based ranks, ties sharing their mean rank
/// (scipy.stats.spearmanr).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    assert_same_len(x.len(), y.len());
    pearson(&average_ranks(x), &average_ranks(y))
}

/// 1-based ranks; a run of equal values gets the mean of the ranks it spans.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1 ..= end; their mean is (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Index of the largest logit (the first one on ties, like numpy's argmax).
fn argmax(logits: &[f32]) -> u32 {
    assert!(!logits.is_empty(), "argmax of an empty logit row");
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The GLUE metrics of `task`, from per-example model outputs and gold labels.
///
/// Classification: prediction = argmax of each row. MRPC and QQP report "accuracy" and "f1";
/// CoLA "matthews"; STS-B (regression: `logits[i][0]` is the predicted score) "pearson" and
/// "spearman"; every other task "accuracy".
///
/// Labels of the wrong kind for the task (a class for STS-B, a score elsewhere), a length
/// mismatch or an empty set are errors: no metric is reported that is not a number.
pub fn task_metrics(
    task: Task,
    logits: &[Vec<f32>],
    labels: &[Label],
) -> Result<BTreeMap<String, f64>, MetricsError> {
    if logits.len() != labels.len() {
        return Err(MetricsError::Lengths(logits.len(), labels.len()));
    }
    if labels.is_empty() {
        return Err(MetricsError::Empty(task));
    }
    let mut out = BTreeMap::new();
    if task.is_regression() {
        let pred: Vec<f64> = logits.iter().map(|row| f64::from(row[0])).collect();
        let gold: Vec<f64> = labels
            .iter()
            .map(|l| match *l {
                Label::Score(s) => Ok(f64::from(s)),
                Label::Class(c) => Err(MetricsError::LabelKind {
                    task,
                    expected: "score",
                    got: c.to_string(),
                }),
            })
            .collect::<Result<_, _>>()?;
        out.insert("pearson".to_string(), pearson(&pred, &gold));
        out.insert("spearman".to_string(), spearman(&pred, &gold));
        return Ok(out);
    }

    let pred: Vec<u32> = logits.iter().map(|row| argmax(row)).collect();
    let gold: Vec<u32> = labels
        .iter()
        .map(|l| match *l {
            Label::Class(c) => Ok(c),
            Label::Score(s) => Err(MetricsError::LabelKind {
                task,
                expected: "class",
                got: s.to_string(),
            }),
        })
        .collect::<Result<_, _>>()?;
    match task {
        Task::Cola => {
            out.insert("matthews".to_string(), matthews_corrcoef(&pred, &gold));
        }
        Task::Mrpc | Task::Qqp => {
            out.insert("accuracy".to_string(), accuracy(&pred, &gold));
            out.insert("f1".to_string(), f1_binary(&pred, &gold));
        }
        _ => {
            out.insert("accuracy".to_string(), accuracy(&pred, &gold));
        }
    }
    Ok(out)
}

/// Why metrics could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{0} predictions but {1} labels")]
    Lengths(usize, usize),
    #[error("no examples to score for {0}: the evaluation set is empty (check the split file, --limit or --eval-limit)")]
    Empty(Task),
    #[error("{task} expects {expected} labels, got {got}: the data does not match the task (check --task)")]
    LabelKind {
        task: Task,
        expected: &'static str,
        got: String,
    },
}

/// The metric used to pick the best epoch and to compare methods; always a key of
/// `task_metrics(task, ..)`.
pub fn primary_metric(task: Task) -> &'static str {
    match task {
        Task::Cola => "matthews",
        Task::Stsb => "pearson",
        _ => "accuracy",
    }
}

fn assert_same_len(a: usize, b: usize) {
    assert_eq!(a, b, "predictions and labels differ in length");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    // pred  = [1,1,0,0,1]
    // label = [1,0,0,1,1]
    // match:   y n y n y → accuracy 3/5 = 0.6
    // TP = 2 (pos 0, 4), FP = 1 (pos 1), TN = 1 (pos 2), FN = 1 (pos 3)
    const PRED: [u32; 5] = [1, 1, 0, 0, 1];
    const LABEL: [u32; 5] = [1, 0, 0, 1, 1];

    #[test]
    fn accuracy_by_hand() {
        assert!(close(accuracy(&PRED, &LABEL), 0.6));
        assert!(close(accuracy(&[2, 1, 0], &[2, 1, 1]), 2.0 / 3.0));
    }

    #[test]
    fn f1_by_hand() {
        // precision = 2/3, recall = 2/3 → F1 = 2·TP/(2·TP+FP+FN) = 4/6 = 2/3.
        assert!(close(f1_binary(&PRED, &LABEL), 2.0 / 3.0));
        // No true positive → 0.
        assert_eq!(f1_binary(&[0, 0, 0], &[1, 0, 1]), 0.0);
        // TP = 1, FP = 2, FN = 0 → 2/(2+2) = 0.5.
        assert!(close(f1_binary(&[1, 1, 1], &[1, 0, 0]), 0.5));
    }

    #[test]
    fn matthews_by_hand() {
        // (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2·1 − 1·1)/sqrt(3·3·2·2) = 1/6.
        assert!(close(matthews_corrcoef(&PRED, &LABEL), 1.0 / 6.0));
        assert!(close(matthews_corrcoef(&[1, 0, 1, 0], &[1, 0, 1, 0]), 1.0));
        assert!(close(matthews_corrcoef(&[0, 1, 0, 1], &[1, 0, 1, 0]), -1.0));
    }

    #[test]
    fn matthews_degenerate_is_zero() {
        // All-one predictions: TN = FN = 0, so (TN+FP)(TN+FN) has a zero factor.
        assert_eq!(matthews_corrcoef(&[1, 1, 1, 1], &[1, 0, 1, 0]), 0.0);
        assert_eq!(matthews_corrcoef(&[0, 0, 0], &[0, 0, 0]), 0.0);
    }

    #[test]
    fn pearson_closed_forms() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let up: Vec<f64> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        let down: Vec<f64> = x.iter().map(|v| -v).collect();
        assert!(close(pearson(&x, &up), 1.0));
        assert!(close(pearson(&x, &down), -1.0));
        // x = [1,2,3,4], y = [2,1,4,3]; both means 2.5.
        // dx = [−1.5,−0.5,0.5,1.5], dy = [−0.5,−1.5,1.5,0.5]
        // Σdx·dy = 0.75+0.75+0.75+0.75 = 3; Σdx² = Σdy² = 5 → r = 3/5 = 0.6.
        assert!(close(
            pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 1.0, 4.0, 3.0]),
            0.6
        ));
        assert!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    }

    #[test]
    fn spearman_with_ties() {
        // x = [1,2,2,3] → ranks [1, 2.5, 2.5, 4]; y = [1,3,2,4] → ranks [1, 3, 2, 4].
        // Both rank means 2.5: dx = [−1.5,0,0,1.5], dy = [−1.5,0.5,−0.5,1.5]
        // Σdx·dy = 2.25+2.25 = 4.5; Σdx² = 4.5; Σdy² = 2.25+0.25+0.25+2.25 = 5
        // ρ = 4.5 / sqrt(4.5·5) = sqrt(0.9) ≈ 0.948683.
        assert_eq!(
            average_ranks(&[1.0, 2.0, 2.0, 3.0]),
            vec![1.0, 2.5, 2.5, 4.0]
        );
        let rho = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!(close(rho, 0.9_f64.sqrt()), "{rho}");
        // Monotone but non-linear → exactly 1.
        assert!(close(
            spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 8.0, 27.0, 1000.0]),
            1.0
        ));
        // Unsorted input with a triple tie: [3,1,3,3,2] → ranks [4,1,4,4,2].
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 3.0, 2.0]),
            vec![4.0, 1.0, 4.0, 4.0, 2.0]
        );
    }

    fn rows(preds: &[u32], n: usize) -> Vec<Vec<f32>> {
        preds
            .iter()
            .map(|&p| {
                (0..n)
                    .map(|c| if c == p as usize { 1.0 } else { -1.0 })
                    .collect()
            })
            .collect()
    }

    fn classes(labels: &[u32]) -> Vec<Label> {
        labels.iter().map(|&c| Label::Class(c)).collect()
    }

    #[test]
    fn task_metrics_per_task() {
        let m = task_metrics(Task::Mrpc, &rows(&PRED, 2), &classes(&LABEL)).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["accuracy", "f1"]);
        assert!(close(m["accuracy"], 0.6) && close(m["f1"], 2.0 / 3.0));

        let m = task_metrics(Task::Cola, &rows(&PRED, 2), &classes(&LABEL)).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["matthews"]);
        assert!(close(m["matthews"], 1.0 / 6.0));

        let m = task_metrics(Task::Mnli, &rows(&[0, 2, 1], 3), &classes(&[0, 2, 2])).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["accuracy"]);
        assert!(close(m["accuracy"], 2.0 / 3.0));

        let logits = vec![vec![1.0], vec![2.0], vec![2.0], vec![3.0]];
        let gold: Vec<Label> = [1.0, 3.0, 2.0, 4.0]
            .iter()
            .map(|&s| Label::Score(s))
            .collect();
        let m = task_metrics(Task::Stsb, &logits, &gold).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["pearson", "spearman"]);
        assert!(close(m["spearman"], 0.9_f64.sqrt()));
        // pred = [1,2,2,3] (mean 2), gold = [1,3,2,4] (mean 2.5):
        // dx = [−1,0,0,1], dy = [−1.5,0.5,−0.5,1.5]; Σdxdy = 3, Σdx² = 2, Σdy² = 5 → 3/sqrt(10).
        assert!((m["pearson"] - 3.0 / 10f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn mismatched_or_missing_labels_are_errors_not_panics() {
        let err = task_metrics(Task::Stsb, &[vec![1.0]], &[Label::Class(1)]).unwrap_err();
        assert!(
            err.to_string().contains("stsb expects score labels, got 1"),
            "{err}"
        );
        let err = task_metrics(Task::Rte, &[vec![1.0, 0.0]], &[Label::Score(0.5)]).unwrap_err();
        assert!(err.to_string().contains("expects class labels"), "{err}");
        let err = task_metrics(Task::Rte, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("evaluation set is empty"), "{err}");
        assert!(task_metrics(Task::Rte, &[vec![1.0, 0.0]], &[]).is_err());
    }

    #[test]
    fn argmax_takes_first_on_ties() {
        assert_eq!(argmax(&[0.5, 0.5, 0.1]), 0);
        assert_eq!(argmax(&[-1.0, 2.0, 2.0]), 1);
    }

    #[test]
    fn primary_metric_is_reported() {
        for task in Task::ALL {
            let n = task.num_labels();
            let labels = if task.is_regression() {
                vec![Label::Score(1.0), Label::Score(2.0)]
            } else {
                classes(&[0, 1])
            };
            let logits = if task.is_regression() {
                vec![vec![1.0], vec![3.0]]
            } else {
                rows(&[0, 1], n)
            };
            let m = task_metrics(task, &logits, &labels).unwrap();
            assert!(m.contains_key(primary_metric(task)), "{task}");
        }
    }
}

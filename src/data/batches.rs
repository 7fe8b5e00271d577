//! Batch order and collation: padded tensors for a list of examples.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{EncodedExample, Label};

/// A padded batch, ready for a BERT-style forward pass.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (B, T) u32, padded with the pad id to the longest sequence of this batch.
    pub input_ids: Tensor,
    /// (B, T) u32, 0 on padding.
    pub token_type_ids: Tensor,
    /// (B, T) u32: 1 = token, 0 = padding.
    pub attention_mask: Tensor,
    /// (B,) u32 class ids, or (B,) f32 scores for regression.
    pub labels: Tensor,
    /// Which dataset examples the rows are, in row order.
    pub example_indices: Vec<usize>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.example_indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.example_indices.is_empty()
    }
}

/// The order in which examples are visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOrder {
    /// File order (evaluation).
    Sequential,
    /// A permutation drawn from `seed`; each epoch gets its own, reproducible permutation.
    Shuffled { seed: u64, epoch: u64 },
}

impl BatchOrder {
    /// The example indices `0..n` in this order.
    pub fn indices(self, n: usize) -> Vec<usize> {
        let mut indices: Vec<usize> = (0..n).collect();
        if let BatchOrder::Shuffled { seed, epoch } = self {
            // The epoch selects a ChaCha stream: independent permutations per epoch from one
            // seed, without ad-hoc seed arithmetic that could collide across (seed, epoch) pairs.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch);
            indices.shuffle(&mut rng);
        }
        indices
    }
}

/// Stacks the examples at `indices` into one padded batch.
pub(crate) fn collate(
    encoded: &[EncodedExample],
    labels: &[Label],
    indices: &[usize],
    pad_id: u32,
    regression: bool,
    device: &Device,
) -> candle_core::Result<Batch> {
    let b = indices.len();
    let t = indices.iter().map(|&i| encoded[i].len()).max().unwrap_or(0);
    let mut input_ids = vec![pad_id; b * t];
    let mut token_type_ids = vec![0u32; b * t];
    let mut attention_mask = vec![0u32; b * t];
    for (row, &i) in indices.iter().enumerate() {
        let ex = &encoded[i];
        let span = row * t..row * t + ex.len();
        input_ids[span.clone()].copy_from_slice(&ex.input_ids);
        token_type_ids[span.clone()].copy_from_slice(&ex.token_type_ids);
        attention_mask[span].fill(1);
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(input_ids, (b, t), device)?,
        token_type_ids: Tensor::from_vec(token_type_ids, (b, t), device)?,
        attention_mask: Tensor::from_vec(attention_mask, (b, t), device)?,
        labels: label_tensor(labels, indices, regression, device)?,
        example_indices: indices.to_vec(),
    })
}

fn label_tensor(
    labels: &[Label],
    indices: &[usize],
    regression: bool,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let wrong_kind = |i: usize| {
        candle_core::Error::msg(format!(
            "example {i} has label {:?}, but the task is {}",
            labels[i],
            if regression {
                "a regression"
            } else {
                "a classification"
            }
        ))
    };
    if regression {
        let scores = indices
            .iter()
            .map(|&i| match labels[i] {
                Label::Score(s) => Ok(s),
                Label::Class(_) => Err(wrong_kind(i)),
            })
            .collect::<candle_core::Result<Vec<f32>>>()?;
        Tensor::from_vec(scores, indices.len(), device)
    } else {
        let classes = indices
            .iter()
            .map(|&i| match labels[i] {
                Label::Class(c) => Ok(c),
                Label::Score(_) => Err(wrong_kind(i)),
            })
            .collect::<candle_core::Result<Vec<u32>>>()?;
        Tensor::from_vec(classes, indices.len(), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_is_identity() {
        assert_eq!(BatchOrder::Sequential.indices(5), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn shuffles_reproduce_per_seed_and_epoch() {
        let order = |seed, epoch| BatchOrder::Shuffled { seed, epoch }.indices(100);
        let a = order(7, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "not a permutation");
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        assert_eq!(a, order(7, 0));
        assert_ne!(a, order(7, 1));
        assert_ne!(a, order(8, 0));
    }

    #[test]
    fn collate_pads_to_longest() {
        let encoded = vec![
            EncodedExample {
                input_ids: vec![101, 5, 102],
                token_type_ids: vec![0, 0, 0],
            },
            EncodedExample {
                input_ids: vec![101, 6, 7, 102, 8, 102],
                token_type_ids: vec![0, 0, 0, 0, 1, 1],
            },
        ];
        let labels = [Label::Class(1), Label::Class(0)];
        let batch = collate(&encoded, &labels, &[1, 0], 9, false, &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.dims(), &[2, 6]);
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![101, 6, 7, 102, 8, 102], vec![101, 5, 102, 9, 9, 9]]
        );
        assert_eq!(
            batch.token_type_ids.to_vec2::<u32>().unwrap(),
            vec![vec![0, 0, 0, 0, 1, 1], vec![0, 0, 0, 0, 0, 0]]
        );
        assert_eq!(
            batch.attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 1, 1, 1, 1], vec![1, 1, 1, 0, 0, 0]]
        );
        assert_eq!(batch.labels.to_vec1::<u32>().unwrap(), vec![0, 1]);
        assert_eq!(batch.example_indices, vec![1, 0]);
    }

    #[test]
    fn collate_regression_and_kind_mismatch() {
        let encoded = vec![EncodedExample {
            input_ids: vec![101, 102],
            token_type_ids: vec![0, 0],
        }];
        let batch = collate(&encoded, &[Label::Score(2.5)], &[0], 0, true, &Device::Cpu).unwrap();
        assert_eq!(batch.labels.dtype(), candle_core::DType::F32);
        assert_eq!(batch.labels.to_vec1::<f32>().unwrap(), vec![2.5]);
        let err = collate(&encoded, &[Label::Class(1)], &[0], 0, true, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("regression"), "{err}");
    }
}

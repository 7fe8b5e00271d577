//! A task split loaded, tokenised and ready to batch.

use std::path::Path;

use candle_core::Device;
use tokenizers::Tokenizer;

use super::batches::collate;
use super::{encode_examples, load_examples, pad_token_id};
use super::{Batch, BatchOrder, DataError, EncodedExample, Example, Label, Split, Task};

/// Examples of one task split with their encodings; `examples[i]` ↔ `encoded[i]`.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub task: Task,
    pub examples: Vec<Example>,
    pub encoded: Vec<EncodedExample>,
    pub pad_id: u32,
}

impl Dataset {
    /// Loads `split` of `task` from `data_dir`, keeps the first `limit` examples (file order)
    /// when given, and tokenises them to at most `max_len` tokens.
    pub fn load(
        data_dir: &Path,
        task: Task,
        split: Split,
        tokenizer: &Tokenizer,
        max_len: usize,
        limit: Option<usize>,
    ) -> anyhow::Result<Dataset> {
        let mut examples = load_examples(data_dir, task, split)?;
        let path = data_dir.join(task.dir_name()).join(task.split_file(split));
        if examples.is_empty() {
            // A metric of an empty set is not a number: refuse instead of reporting NaN.
            return Err(DataError::Empty {
                path,
                why: " (the file is empty or holds only its header)",
            }
            .into());
        }
        if let Some(limit) = limit {
            examples.truncate(limit);
            if examples.is_empty() {
                return Err(DataError::Empty {
                    path,
                    why: " after a limit of 0 examples",
                }
                .into());
            }
        }
        Self::from_examples(task, examples, tokenizer, max_len)
    }

    /// Tokenises already-loaded examples.
    pub fn from_examples(
        task: Task,
        examples: Vec<Example>,
        tokenizer: &Tokenizer,
        max_len: usize,
    ) -> anyhow::Result<Dataset> {
        let pad_id = pad_token_id(tokenizer)?;
        let encoded = encode_examples(tokenizer, &examples, max_len)?;
        Ok(Dataset {
            task,
            examples,
            encoded,
            pad_id,
        })
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Gold labels in dataset order (for metrics).
    pub fn labels(&self) -> Vec<Label> {
        self.examples.iter().map(|e| e.label).collect()
    }

    /// Number of batches `batches(batch_size, ..)` yields; the last one may be short.
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.len().div_ceil(batch_size)
    }

    /// Batches of `batch_size` examples (the last may be smaller) in `order`, each padded to its
    /// own longest sequence so that short batches do not pay for long ones.
    pub fn batches<'a>(
        &'a self,
        batch_size: usize,
        order: BatchOrder,
        device: &'a Device,
    ) -> impl Iterator<Item = candle_core::Result<Batch>> + 'a {
        assert!(batch_size > 0, "batch_size must be positive");
        assert_eq!(
            self.examples.len(),
            self.encoded.len(),
            "examples and encodings differ"
        );
        let labels = self.labels();
        let regression = self.task.is_regression();
        let indices = order.indices(self.len());
        // Materialise chunk boundaries now so the iterator owns its data and borrows only self.
        let chunks: Vec<Vec<usize>> = indices.chunks(batch_size).map(<[usize]>::to_vec).collect();
        chunks.into_iter().map(move |chunk| {
            collate(
                &self.encoded,
                &labels,
                &chunk,
                self.pad_id,
                regression,
                device,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::{glue_dir, tokenizer};

    fn rte(limit: usize) -> Dataset {
        Dataset::load(
            &glue_dir(),
            Task::Rte,
            Split::Dev,
            &tokenizer(),
            64,
            Some(limit),
        )
        .unwrap()
    }

    #[test]
    fn limit_keeps_the_first_examples() {
        let ds = rte(10);
        assert_eq!(ds.len(), 10);
        assert_eq!(ds.encoded.len(), 10);
        let lines: Vec<usize> = ds.examples.iter().map(|e| e.line).collect();
        assert_eq!(lines, (2..12).collect::<Vec<_>>());
        assert_eq!(ds.pad_id, 0);
        assert!(ds.encoded.iter().all(|e| e.len() <= 64));
    }

    #[test]
    fn sequential_batches_shapes_padding_and_masks() {
        let ds = rte(10);
        let batches: Vec<Batch> = ds
            .batches(4, BatchOrder::Sequential, &Device::Cpu)
            .collect::<candle_core::Result<_>>()
            .unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(ds.num_batches(4), 3);
        let mut seen = vec![];
        for batch in &batches {
            let rows = batch.len();
            let longest = batch
                .example_indices
                .iter()
                .map(|&i| ds.encoded[i].len())
                .max()
                .unwrap();
            assert_eq!(batch.input_ids.dims(), &[rows, longest]);
            assert_eq!(batch.token_type_ids.dims(), &[rows, longest]);
            assert_eq!(batch.attention_mask.dims(), &[rows, longest]);
            assert_eq!(batch.labels.dims(), &[rows]);

            let ids = batch.input_ids.to_vec2::<u32>().unwrap();
            let types = batch.token_type_ids.to_vec2::<u32>().unwrap();
            let mask = batch.attention_mask.to_vec2::<u32>().unwrap();
            let labels = batch.labels.to_vec1::<u32>().unwrap();
            for (r, &i) in batch.example_indices.iter().enumerate() {
                let enc = &ds.encoded[i];
                let n = enc.len();
                assert_eq!(mask[r].iter().sum::<u32>() as usize, n);
                assert_eq!(&ids[r][..n], &enc.input_ids[..]);
                assert_eq!(&types[r][..n], &enc.token_type_ids[..]);
                assert!(ids[r][n..].iter().all(|&x| x == ds.pad_id));
                assert!(types[r][n..].iter().all(|&x| x == 0));
                assert!(mask[r][n..].iter().all(|&x| x == 0));
                assert_eq!(Label::Class(labels[r]), ds.examples[i].label);
            }
            seen.extend_from_slice(&batch.example_indices);
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // Dynamic padding: at least one batch is shorter than the longest example overall.
        let overall = ds.encoded.iter().map(EncodedExample::len).max().unwrap();
        assert!(batches.iter().any(|b| b.input_ids.dims()[1] < overall));
    }

    #[test]
    fn shuffled_batches_are_reproducible_permutations() {
        let ds = rte(50);
        let order_of = |epoch| -> Vec<usize> {
            ds.batches(8, BatchOrder::Shuffled { seed: 42, epoch }, &Device::Cpu)
                .flat_map(|b| b.unwrap().example_indices)
                .collect()
        };
        let e0 = order_of(0);
        let mut sorted = e0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(e0, order_of(0));
        assert_ne!(e0, order_of(1));
    }
}

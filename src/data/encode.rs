//! Tokenisation of examples into BERT-style inputs ([CLS] a [SEP] b [SEP]).

use anyhow::{ensure, Context};
use tokenizers::{EncodeInput, PostProcessor, Tokenizer, TruncationParams, TruncationStrategy};

use super::{DataError, Example};

/// Token ids of one example, with special tokens, truncated, not padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    pub input_ids: Vec<u32>,
    /// 0 for [CLS], text a and the first [SEP]; 1 for text b and the final [SEP].
    pub token_type_ids: Vec<u32>,
}

impl EncodedExample {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Encodes every example with special tokens, truncating to at most `max_len` tokens.
///
/// Pairs are truncated "longest first" exactly as HF transformers' fast tokenizers do
/// (`truncation=True`), since this is the same `tokenizers` truncation code. Any padding or
/// truncation stored in the tokenizer file is replaced: padding is done per batch instead.
pub fn encode_examples(
    tokenizer: &Tokenizer,
    examples: &[Example],
    max_len: usize,
) -> anyhow::Result<Vec<EncodedExample>> {
    // `tokenizers` subtracts the special tokens from max_length without checking, which would
    // wrap around (and silently disable truncation) in release builds.
    let specials = tokenizer
        .get_post_processor()
        .map_or(0, |p| p.added_tokens(true));
    ensure!(
        max_len > specials,
        "max_len {max_len} leaves no room for text after the {specials} special tokens of a pair"
    );

    let mut tokenizer = tokenizer.clone();
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("cannot set truncation to {max_len}: {e}"))?;

    let inputs: Vec<EncodeInput> = examples
        .iter()
        .map(|ex| match &ex.text_b {
            Some(b) => (ex.text_a.as_str(), b.as_str()).into(),
            None => ex.text_a.as_str().into(),
        })
        .collect();
    let encodings = tokenizer
        .encode_batch(inputs, true)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("tokenising {} examples", examples.len()))?;

    Ok(encodings
        .into_iter()
        .map(|enc| EncodedExample {
            input_ids: enc.get_ids().to_vec(),
            token_type_ids: enc.get_type_ids().to_vec(),
        })
        .collect())
}

/// The id of the tokenizer's padding token: "[PAD]" (BERT) or "<pad>" (RoBERTa and others).
pub fn pad_token_id(tokenizer: &Tokenizer) -> Result<u32, DataError> {
    ["[PAD]", "<pad>"]
        .iter()
        .find_map(|tok| tokenizer.token_to_id(tok))
        .ok_or(DataError::NoPadToken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_support::tokenizer;
    use crate::data::Label;

    const CLS: u32 = 101;
    const SEP: u32 = 102;

    fn example(a: &str, b: Option<&str>) -> Example {
        Example {
            text_a: a.to_string(),
            text_b: b.map(str::to_string),
            label: Label::Class(0),
            line: 1,
        }
    }

    /// Word-piece count of a text on its own, with no special tokens and no truncation.
    fn piece_count(tok: &Tokenizer, text: &str) -> usize {
        let mut tok = tok.clone();
        tok.with_padding(None);
        tok.with_truncation(None).unwrap();
        tok.encode(text, false).unwrap().get_ids().len()
    }

    #[test]
    fn short_pair_by_hand() {
        let tok = tokenizer();
        let enc = encode_examples(&tok, &[example("Hello world", Some("good day"))], 128).unwrap();
        let enc = &enc[0];
        // Every word is a whole uncased vocabulary entry.
        let id = |w: &str| tok.token_to_id(w).unwrap();
        let expected = vec![
            CLS,
            id("hello"),
            id("world"),
            SEP,
            id("good"),
            id("day"),
            SEP,
        ];
        assert_eq!(enc.input_ids, expected);
        assert_eq!(enc.token_type_ids, vec![0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(pad_token_id(&tok).unwrap(), 0);
    }

    #[test]
    fn single_sentence_and_no_stored_padding() {
        let tok = tokenizer();
        // The tokenizer file pads to 128; that must not leak into the encodings.
        let enc = encode_examples(&tok, &[example("a fine film .", None)], 128).unwrap();
        let enc = &enc[0];
        assert_eq!(enc.len(), 2 + piece_count(&tok, "a fine film ."));
        assert_eq!(
            (enc.input_ids[0], *enc.input_ids.last().unwrap()),
            (CLS, SEP)
        );
        assert!(enc.token_type_ids.iter().all(|&t| t == 0));
    }

    #[test]
    fn single_sentence_is_truncated() {
        let tok = tokenizer();
        let long = "word ".repeat(50);
        let enc = encode_examples(&tok, &[example(&long, None)], 16).unwrap();
        assert_eq!(enc[0].len(), 16);
        assert_eq!((enc[0].input_ids[0], enc[0].input_ids[15]), (CLS, SEP));
    }

    /// Positions of [SEP] give the kept lengths of a and b.
    fn kept_lengths(enc: &EncodedExample) -> (usize, usize) {
        let seps: Vec<usize> = (0..enc.len())
            .filter(|&i| enc.input_ids[i] == SEP)
            .collect();
        assert_eq!(seps.len(), 2, "{:?}", enc.input_ids);
        (seps[0] - 1, seps[1] - seps[0] - 1)
    }

    #[test]
    fn pair_truncation_cuts_the_longer_side_first() {
        let tok = tokenizer();
        let short = "the cat sat on the mat";
        let long = "the quick brown fox jumps over the lazy dog ".repeat(6);
        let (na, nb) = (piece_count(&tok, short), piece_count(&tok, &long));
        let max_len = 32;
        assert!(na + nb + 3 > max_len && na < (max_len - 3) / 2);

        let enc = encode_examples(
            &tok,
            &[example(short, Some(&long)), example(&long, Some(short))],
            max_len,
        )
        .unwrap();
        // The short side fits in half the budget, so it is kept whole; the long side gets the rest.
        assert_eq!(enc[0].len(), max_len);
        assert_eq!(kept_lengths(&enc[0]), (na, max_len - 3 - na));
        assert_eq!(enc[1].len(), max_len);
        assert_eq!(kept_lengths(&enc[1]), (max_len - 3 - na, na));
        // Truncation keeps the beginning of each text.
        let full = encode_examples(&tok, &[example(short, Some(&long))], 512).unwrap();
        assert_eq!(full[0].len(), na + nb + 3);
        assert_eq!(enc[0].input_ids[..na + 2], full[0].input_ids[..na + 2]);
        assert_eq!(
            enc[0].input_ids[na + 2..max_len - 1],
            full[0].input_ids[na + 2..max_len - 1]
        );
    }

    #[test]
    fn pair_truncation_splits_when_both_are_long() {
        let tok = tokenizer();
        let a = "one two three four five six seven eight nine ten ".repeat(3);
        let b = "red green blue yellow ".repeat(10);
        let (na, nb) = (piece_count(&tok, &a), piece_count(&tok, &b));
        let max_len = 25; // 22 text tokens: both sides exceed half of it.
        assert!(na > 11 && nb > 11 && na != nb);
        let enc = encode_examples(&tok, &[example(&a, Some(&b))], max_len).unwrap();
        assert_eq!(enc[0].len(), max_len);
        // Both are cut to half the budget; with an odd budget the longer side keeps the extra.
        let (ka, kb) = kept_lengths(&enc[0]);
        assert_eq!(ka + kb, 22);
        assert_eq!((ka, kb), (11, 11));
        let max_len = 26; // 23 text tokens: the longer keeps 12.
        let enc = encode_examples(&tok, &[example(&a, Some(&b))], max_len).unwrap();
        let expected = if na > nb { (12, 11) } else { (11, 12) };
        assert_eq!(kept_lengths(&enc[0]), expected);
    }

    #[test]
    fn max_len_must_leave_room_for_text() {
        let tok = tokenizer();
        let err = encode_examples(&tok, &[example("a", Some("b"))], 3).unwrap_err();
        assert!(err.to_string().contains("special tokens"), "{err}");
    }
}

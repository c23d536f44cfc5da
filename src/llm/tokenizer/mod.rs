//! Byte-level BPE tokenizer built from a checkpoint's own vocabulary: GGUF metadata
//! (`tokenizer.ggml.*`) or a Hugging Face `tokenizer.json`.
//!
//! Encoding splits the text on special tokens first (control and user-defined tokens, longest
//! first, as llama.cpp does), pre-tokenizes the rest with the model's regexes, maps bytes to GPT-2
//! characters and merges by rank. It never adds BOS: chat templates write it themselves. The ids
//! must equal llama.cpp's on the same GGUF file; the fixture test checks that.

mod bpe;
mod bytes;
mod gguf;
mod hf;
pub mod pretokenize;

use std::collections::HashMap;

pub use pretokenize::PreTokenizer;

use crate::llm::error::{LlmError, Result};

/// How a vocabulary entry is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Ordinary BPE token, written in GPT-2's byte alphabet.
    Normal,
    /// Control token (`<|im_end|>`): matched in text, decoded only when asked.
    Control,
    /// User-defined token (`<tool_call>`): matched in text, decoded as its text.
    UserDefined,
    /// Unknown or unused entry.
    Unused,
}

/// The parts a tokenizer is made of, whatever file they came from.
pub struct TokenizerParts {
    pub tokens: Vec<String>,
    pub kinds: Vec<TokenKind>,
    /// Merge rules in rank order, each as the two vocabulary strings.
    pub merges: Vec<(String, String)>,
    pub pre: PreTokenizer,
    /// Use a piece as-is when it is a vocabulary entry, skipping merges (Llama 3).
    pub ignore_merges: bool,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// A byte-level BPE tokenizer. Cheap to share (`Arc`) across conversations; encoding is `&self`.
pub struct Tokenizer {
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Bytes each token decodes to.
    bytes: Vec<Vec<u8>>,
    ids: HashMap<String, u32>,
    merges: bpe::Merges,
    byte_ids: [Option<u32>; 256],
    /// Tokens matched literally in the input, longest first.
    specials: Vec<(String, u32)>,
    pre: PreTokenizer,
    ignore_merges: bool,
    byte_map: bytes::ByteMap,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("specials", &self.specials.len())
            .finish()
    }
}

impl Tokenizer {
    /// Assemble from parts; validates that the vocabulary covers every byte.
    pub fn from_parts(parts: TokenizerParts) -> Result<Self> {
        let TokenizerParts {
            tokens,
            kinds,
            merges: merge_list,
            pre,
            ignore_merges,
            bos,
            eos,
        } = parts;
        if tokens.len() != kinds.len() {
            return Err(LlmError::Tokenizer(format!(
                "{} tokens but {} token types",
                tokens.len(),
                kinds.len()
            )));
        }
        let byte_map = bytes::ByteMap::new();
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut bytes = Vec::with_capacity(tokens.len());
        let mut specials = Vec::new();
        for (i, (tok, kind)) in tokens.iter().zip(&kinds).enumerate() {
            let id =
                u32::try_from(i).map_err(|_| LlmError::Tokenizer("vocabulary too large".into()))?;
            ids.entry(tok.clone()).or_insert(id);
            let b = match kind {
                TokenKind::Normal | TokenKind::Unused => byte_map
                    .decode(tok)
                    .unwrap_or_else(|| tok.as_bytes().to_vec()),
                TokenKind::Control | TokenKind::UserDefined => tok.as_bytes().to_vec(),
            };
            bytes.push(b);
            if matches!(kind, TokenKind::Control | TokenKind::UserDefined) && !tok.is_empty() {
                specials.push((tok.clone(), id));
            }
        }
        // Longest first; ties by id for determinism.
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut byte_ids = [None; 256];
        for b in 0..=255u8 {
            byte_ids[b as usize] = ids.get(&byte_map.char_of(b).to_string()).copied();
        }
        let mut merges = bpe::Merges::with_capacity(merge_list.len());
        for (rank, (a, b)) in merge_list.iter().enumerate() {
            let (Some(&ia), Some(&ib)) = (ids.get(a), ids.get(b)) else {
                continue;
            };
            let Some(&im) = ids.get(&format!("{a}{b}")) else {
                continue;
            };
            merges.entry((ia, ib)).or_insert((rank as u32, im));
        }
        Ok(Tokenizer {
            tokens,
            kinds,
            bytes,
            ids,
            merges,
            byte_ids,
            specials,
            pre,
            ignore_merges,
            byte_map,
            bos,
            eos,
        })
    }

    /// Number of entries in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The vocabulary string of `id`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes `id` decodes to (special tokens: their text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// How `id` is treated.
    pub fn kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// Whether `id` is a control or user-defined token.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(
            self.kind(id),
            Some(TokenKind::Control | TokenKind::UserDefined)
        )
    }

    /// The id of a token given by its text, special or not.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.specials
            .iter()
            .find(|(t, _)| t == text)
            .map(|&(_, id)| id)
            .or_else(|| {
                let encoded: String = text.bytes().map(|b| self.byte_map.char_of(b)).collect();
                self.ids.get(&encoded).copied()
            })
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Encode `text`, matching special tokens when `parse_special`; never adds BOS.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        if !parse_special || self.specials.is_empty() {
            self.encode_plain(text, &mut out)?;
            return Ok(out);
        }
        for frag in self.split_specials(text) {
            match frag {
                Fragment::Special(id) => out.push(id),
                Fragment::Text(t) => self.encode_plain(t, &mut out)?,
            }
        }
        Ok(out)
    }

    /// Encode raw bytes without parsing special tokens: valid UTF-8 runs as text, any invalid
    /// byte as its byte token.
    pub fn encode_bytes(&self, mut bytes: &[u8]) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    self.encode_plain(s, &mut out)?;
                    break;
                }
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    // The prefix is valid UTF-8 by construction.
                    self.encode_plain(std::str::from_utf8(valid).unwrap_or_default(), &mut out)?;
                    let bad = e.error_len().unwrap_or(rest.len()).max(1).min(rest.len());
                    for &b in &rest[..bad] {
                        out.push(self.byte_ids[b as usize].ok_or_else(|| {
                            LlmError::Tokenizer(format!("no token for byte {b:#04x}"))
                        })?);
                    }
                    bytes = &rest[bad..];
                }
            }
        }
        Ok(out)
    }

    /// Split on special tokens the way llama.cpp does: each special token in turn (longest
    /// first) partitions the text fragments that are still raw.
    fn split_specials<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut frags = vec![Fragment::Text(text)];
        for (tok, id) in &self.specials {
            if !text.contains(tok.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(t) if t.contains(tok.as_str()) => {
                        let mut rest = t;
                        while let Some(pos) = rest.find(tok.as_str()) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Special(*id));
                            rest = &rest[pos + tok.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    other => next.push(other),
                }
            }
            frags = next;
        }
        frags
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut piece_ids = Vec::new();
        for piece in self.pre.split(text)? {
            if self.ignore_merges {
                let encoded: String = piece.bytes().map(|b| self.byte_map.char_of(b)).collect();
                if let Some(&id) = self.ids.get(&encoded) {
                    out.push(id);
                    continue;
                }
            }
            piece_ids.clear();
            for b in piece.bytes() {
                let id = self.byte_ids[b as usize].ok_or_else(|| {
                    LlmError::Tokenizer(format!("vocabulary has no token for byte {b:#04x}"))
                })?;
                piece_ids.push(id);
            }
            bpe::merge(&piece_ids, &self.merges, out);
        }
        Ok(())
    }

    /// Decode ids to bytes; control tokens are written only when `with_special`.
    pub fn decode_bytes(&self, ids: &[u32], with_special: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &id in ids {
            if !with_special && self.kind(id) == Some(TokenKind::Control) {
                continue;
            }
            if let Some(b) = self.bytes.get(id as usize) {
                out.extend_from_slice(b);
            }
        }
        out
    }

    /// Decode ids to text (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32], with_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, with_special)).into_owned()
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Special(u32),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny byte-level tokenizer: all 256 bytes, a few merges, two specials.
    pub(crate) fn tiny() -> Tokenizer {
        let map = bytes::ByteMap::new();
        let mut tokens: Vec<String> = (0..=255u8).map(|b| map.char_of(b).to_string()).collect();
        let merges = vec![
            ("h", "e"),
            ("l", "l"),
            ("he", "ll"),
            ("hell", "o"),
            ("Ġ", "w"),
        ];
        for (a, b) in &merges {
            tokens.push(format!("{a}{b}"));
        }
        tokens.push("<|im_end|>".into());
        tokens.push("<tool_call>".into());
        let mut kinds = vec![TokenKind::Normal; tokens.len()];
        let n = kinds.len();
        kinds[n - 2] = TokenKind::Control;
        kinds[n - 1] = TokenKind::UserDefined;
        Tokenizer::from_parts(TokenizerParts {
            tokens,
            kinds,
            merges: merges
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            pre: PreTokenizer::for_gguf_pre("gpt2").unwrap(),
            ignore_merges: false,
            bos: None,
            eos: Some(n as u32 - 2),
        })
        .unwrap()
    }

    #[test]
    fn encodes_merges_and_specials() {
        let t = tiny();
        let ids = t.encode("hello<|im_end|>", true).unwrap();
        assert_eq!(ids, [259, 261]);
        let ids = t.encode("hello<|im_end|>", false).unwrap();
        assert!(ids.len() > 2);
        assert_eq!(t.decode(&ids, false), "hello<|im_end|>");
        assert_eq!(t.encode("", true).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn decode_hides_control_tokens_unless_asked() {
        let t = tiny();
        let ids = t.encode("hello<tool_call><|im_end|>", true).unwrap();
        assert_eq!(t.decode(&ids, false), "hello<tool_call>");
        assert_eq!(t.decode(&ids, true), "hello<tool_call><|im_end|>");
        assert_eq!(t.token_id("<|im_end|>"), Some(261));
        assert_eq!(t.token_id("hello"), Some(259));
    }

    #[test]
    fn invalid_utf8_encodes_as_byte_tokens() {
        let t = tiny();
        let ids = t
            .encode_bytes(&[b'h', b'e', 0xF0, 0x9F, b'l', b'l', b'o'])
            .unwrap();
        assert_eq!(
            t.decode_bytes(&ids, true),
            vec![b'h', b'e', 0xF0, 0x9F, b'l', b'l', b'o']
        );
    }

    #[test]
    fn arbitrary_bytes_round_trip() {
        let t = tiny();
        let s = "Ünïcödé 日本語 🎉 \t\r\n  x";
        let ids = t.encode(s, true).unwrap();
        assert_eq!(t.decode(&ids, true), s);
    }
}

//! Tokenizers built from GGUF metadata against llama.cpp's ids on the same files.

use apigen_mt::llm::Tokenizer;

use super::support::{REFERENCED, model_file, reference};

#[test]
fn gguf_tokenizers_match_llama_cpp_ids() {
    for &(profile, reference_file) in REFERENCED {
        let (Some(reference), Some(path)) = (reference(reference_file), model_file(profile)) else {
            continue;
        };
        let tok = Tokenizer::from_gguf_file(&path).unwrap();
        let cases = reference["tokenization"].as_array().unwrap();
        assert!(cases.len() >= 20);
        let mut mismatches = vec![];
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            let got = tok.encode(text, true).unwrap();
            if got != want {
                mismatches.push(format!(
                    "{text:?}\n  llama.cpp {want:?}\n  ours      {got:?}"
                ));
            }
            // Decoding gives the text back (special tokens written out).
            assert_eq!(tok.decode(&got, true), text, "{profile}");
        }
        assert!(
            mismatches.is_empty(),
            "{profile}: {} of {} differ:\n{}",
            mismatches.len(),
            cases.len(),
            mismatches.join("\n")
        );
        for c in reference["continuations"].as_array().unwrap() {
            let want: Vec<u32> = serde_json::from_value(c["prompt_ids"].clone()).unwrap();
            assert_eq!(
                tok.encode(c["prompt"].as_str().unwrap(), true).unwrap(),
                want,
                "{profile} prompt"
            );
        }
    }
}

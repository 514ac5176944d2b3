//! CLIP tokenizer parity against Python: HF `CLIPTokenizerFast` and `open_clip.tokenize`.
//!
//! References: `data/tests/fixtures/tokenizer/reference.json`, written by
//! `make_tokenizer_fixtures.py` beside it (65 tricky strings: punctuation, accents, emoji, CJK,
//! full-width, HTML entities, > 77 tokens). None of the Python tokenizers reads siam's
//! `clip_tokenizer.json`: they rebuild CLIP's vocabulary from OpenAI's BPE file themselves.
//!
//! siam equals HF's `CLIPTokenizerFast` on every string. open_clip (and OpenAI's tokenizer, and
//! HF's slow `CLIPTokenizer` with ftfy) clean text with `ftfy.fix_text` + `html.unescape` first,
//! and treat a literal `<|endoftext|>` in the text as characters; HF fast does NFC only and
//! matches literal special tokens. The fixture lists the 12 strings where this matters
//! (curly quotes, full-width and half-width forms, ligatures, final sigma, `&amp;`, mojibake,
//! control characters, literal special tokens); everywhere else siam's 0-padded rows equal
//! open_clip's exactly.

use std::path::{Path, PathBuf};

use siam_data::tokenizer::{
    ClipTokenizer, TokenizerError, CLIP_CONTEXT_LENGTH, END_OF_TEXT, PAD_ID, START_OF_TEXT,
};

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    hf_fast: Vec<u32>,
    open_clip: Vec<u32>,
    differs: bool,
}

#[derive(serde::Deserialize)]
struct Reference {
    context_length: usize,
    differs_from_open_clip: Vec<String>,
    cases: Vec<Case>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn reference_sentence() {
    let tok = ClipTokenizer::builtin().unwrap();
    assert_eq!(
        tok.encode("a photo of a cat", CLIP_CONTEXT_LENGTH).unwrap(),
        vec![49406, 320, 1125, 539, 320, 2368, 49407]
    );
}

#[test]
fn equals_hf_clip_tokenizer_fast_on_every_string() {
    let reference = reference();
    assert_eq!(reference.context_length, CLIP_CONTEXT_LENGTH);
    assert!(reference.cases.len() >= 50);
    let tok = ClipTokenizer::builtin().unwrap();
    for case in &reference.cases {
        let ids = tok.encode(&case.text, reference.context_length).unwrap();
        assert_eq!(ids, case.hf_fast, "text {:?}", case.text);
    }
}

#[test]
fn padded_batch_equals_open_clip_except_recorded_cleaning_differences() {
    let reference = reference();
    let tok = ClipTokenizer::builtin().unwrap();
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let batch = tok
        .encode_batch_padded(&texts, CLIP_CONTEXT_LENGTH, CLIP_CONTEXT_LENGTH)
        .unwrap();
    assert_eq!((batch.rows, batch.len), (texts.len(), CLIP_CONTEXT_LENGTH));
    let mut differing = Vec::new();
    for (i, case) in reference.cases.iter().enumerate() {
        if batch.row(i) != case.open_clip.as_slice() {
            differing.push(case.text.clone());
        }
        assert_eq!(
            batch.row(i) != case.open_clip.as_slice(),
            case.differs,
            "text {:?}",
            case.text
        );
    }
    assert_eq!(differing, reference.differs_from_open_clip);
    // Strings over 77 tokens are among those that agree: truncation keeps the end token.
    let long = reference
        .cases
        .iter()
        .filter(|c| c.hf_fast.len() == CLIP_CONTEXT_LENGTH)
        .count();
    assert!(long >= 5, "only {long} truncated cases");
}

#[test]
fn truncation_keeps_the_end_token() {
    let tok = ClipTokenizer::builtin().unwrap();
    let text = "word ".repeat(200);
    for context in [2, 3, 10, 77] {
        let ids = tok.encode(&text, context).unwrap();
        assert_eq!(ids.len(), context);
        assert_eq!(ids[0], START_OF_TEXT);
        assert_eq!(*ids.last().unwrap(), END_OF_TEXT);
    }
    assert!(matches!(
        tok.encode(&text, 1),
        Err(TokenizerError::ContextTooShort(1))
    ));
}

#[test]
fn batch_is_padded_to_the_longest_row_with_zero() {
    let tok = ClipTokenizer::builtin().unwrap();
    let texts = ["a photo of a cat", "", "a dog", &"long ".repeat(100)];
    let batch = tok.encode_batch(&texts[..3], CLIP_CONTEXT_LENGTH).unwrap();
    assert_eq!((batch.rows, batch.len), (3, 7));
    assert_eq!(batch.lengths, vec![7, 2, 4]);
    assert_eq!(
        batch.row(1),
        &[
            START_OF_TEXT,
            END_OF_TEXT,
            PAD_ID,
            PAD_ID,
            PAD_ID,
            PAD_ID,
            PAD_ID
        ]
    );
    for (i, &end) in batch.end_positions().iter().enumerate() {
        assert_eq!(batch.row(i)[end], END_OF_TEXT);
        assert_eq!(
            tok.encode(texts[i], 77).unwrap(),
            batch.row(i)[..batch.lengths[i]].to_vec()
        );
    }
    let with_long = tok.encode_batch(&texts, CLIP_CONTEXT_LENGTH).unwrap();
    assert_eq!(with_long.len, CLIP_CONTEXT_LENGTH);
    assert_eq!(with_long.ids.len(), 4 * CLIP_CONTEXT_LENGTH);
    let empty = tok.encode_batch(&[], CLIP_CONTEXT_LENGTH).unwrap();
    assert_eq!((empty.rows, empty.len, empty.ids.len()), (0, 0, 0));
}

#[test]
fn from_file_loads_the_committed_asset() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/clip_tokenizer.json");
    let tok = ClipTokenizer::from_file(&path).unwrap();
    assert_eq!(
        tok.encode("Hello, world!", 77).unwrap(),
        ClipTokenizer::builtin()
            .unwrap()
            .encode("Hello, world!", 77)
            .unwrap()
    );
}

fn assert_one_line_naming(e: &TokenizerError, name: &str) {
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(msg.contains(name), "error does not name {name}: {msg}");
}

#[test]
fn wrong_tokenizer_files_give_one_line_errors() {
    let missing = fixtures().join("no_such_tokenizer.json");
    let e = ClipTokenizer::from_file(&missing).unwrap_err();
    assert!(matches!(e, TokenizerError::Read { .. }), "{e:?}");
    assert_one_line_naming(&e, "no_such_tokenizer.json");

    // JSON, but not a tokenizer.
    let e = ClipTokenizer::from_file(&fixtures().join("reference.json")).unwrap_err();
    assert!(matches!(e, TokenizerError::Invalid { .. }), "{e:?}");
    assert_one_line_naming(&e, "reference.json");

    // A valid tokenizer that is not CLIP's.
    let e = ClipTokenizer::from_file(&fixtures().join("not_clip_tokenizer.json")).unwrap_err();
    assert!(matches!(e, TokenizerError::NotClip { .. }), "{e:?}");
    assert_one_line_naming(&e, "not_clip_tokenizer.json");
    assert!(e.to_string().contains("<|startoftext|>"), "{e}");
    eprintln!("{e}");

    // CLIP's file with the two special tokens swapped.
    let asset = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/clip_tokenizer.json");
    let swapped = std::fs::read_to_string(asset)
        .unwrap()
        .replacen("\"<|startoftext|>\":49406", "\"<|startoftext|>\":49999", 1)
        .replacen("\"<|endoftext|>\":49407", "\"<|startoftext|>\":49407", 1)
        .replacen("\"<|startoftext|>\":49999", "\"<|endoftext|>\":49406", 1);
    let dir = std::env::temp_dir().join(format!("siam-tokenizer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("swapped_tokenizer.json");
    std::fs::write(&path, swapped).unwrap();
    let e = ClipTokenizer::from_file(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(e, TokenizerError::NotClip { .. }), "{e:?}");
    assert_one_line_naming(&e, "swapped_tokenizer.json");
    eprintln!("{e}");
}

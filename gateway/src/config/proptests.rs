//! Properties of config loading: no text, however broken, panics the loader, and every refusal names
//! the file it came from.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/example.toml")
}

fn example() -> Vec<u8> {
    std::fs::read(example_path()).unwrap()
}

/// One edit of a file: flip a byte, drop a range, duplicate a range, or cut the file short.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Delete(prop::sample::Index, usize),
    Duplicate(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, &'static str),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<prop::sample::Index>(), 1usize..80).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
        2 => (
            any::<prop::sample::Index>(),
            prop::sample::select(&["\"", "[", "]]", "{", "=", "\n", "#", "'''", "\\u", "é", "1e999", "-", "[[devices]]\n", "${X", "\0"][..])
        )
            .prop_map(|(i, s)| Edit::Insert(i, s)),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = b.len().max(1);
        match e {
            Edit::Set(i, v) if !b.is_empty() => b[i.index(len)] = *v,
            Edit::Delete(i, n) if !b.is_empty() => {
                let at = i.index(len);
                b.drain(at..(at + n).min(b.len()));
            }
            Edit::Duplicate(i, n) if !b.is_empty() => {
                let at = i.index(len);
                let piece = b[at..(at + n).min(b.len())].to_vec();
                b.splice(at..at, piece);
            }
            Edit::Truncate(i) => b.truncate(i.index(len)),
            Edit::Insert(i, s) => {
                let at = i.index(len).min(b.len());
                b.splice(at..at, s.bytes());
            }
            _ => {}
        }
    }
    b
}

/// Loads `text` as if it were `configs/example.toml`; a refusal must name that file.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    let file = Path::new("configs/example.toml");
    if let Err(e) = from_str(text, file, example_path().parent().unwrap()) {
        let message = e.to_string();
        prop_assert!(message.contains("configs/example.toml"), "{message}");
        prop_assert!(!e.problems().is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text is refused (or, rarely, accepted) without a panic.
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_text(&text)?;
    }

    /// TOML-shaped text: tables, keys and values from the config's vocabulary in random order.
    #[test]
    fn toml_shaped_text_never_panics(parts in prop::collection::vec(prop::sample::select(&[
        "[site]\n", "id = \"p\"\n", "[[grids]]\n", "id = \"g1\"\n", "[[devices]]\n", "grid = \"g1\"\n", "category = \"electrical\"\n",
        "points = [{ name = \"ua\" }]\n", "[[mqtt.brokers]]\n", "host = \"127.0.0.1\"\n", "port = 99999\n", "[[mqtt.subscriptions]]\n",
        "broker = \"b\"\n", "topic = \"a/{device}/#\"\n", "timestamp = { pointer = \"ts\", unit = \"ms\" }\n", "[api]\n", "listen = \"x\"\n",
        "[forward]\n", "[[forward.targets]]\n", "url = \"http://[::1\"\n", "token = \"${NOPE}\"\n", "é = 1\n", "x = [\n", "\"\n", "]\n",
    ][..]), 0..24)) {
        check_text(&parts.concat())?;
    }

    /// The example config with random byte flips, cuts, copies and insertions: loads, or is refused
    /// with an error naming the file.
    #[test]
    fn mutated_example_never_panics(edits in prop::collection::vec(edit(), 1..6)) {
        let bytes = apply(example(), &edits);
        check_text(&String::from_utf8_lossy(&bytes))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The same through a file on disk, where invalid UTF-8 is a read error that names the file.
    #[test]
    fn mutated_example_file_never_panics(edits in prop::collection::vec(edit(), 1..6)) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let file = dir.path().join("park.toml");
        std::fs::write(&file, apply(example(), &edits)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Err(e) = load(&file) {
            let message = e.to_string();
            prop_assert!(message.contains(&file.display().to_string()), "{message}");
        }
    }
}

#[test]
fn the_example_itself_loads() {
    load(&example_path()).unwrap();
}

//! Properties of topic patterns: parsing and matching never panic, and a topic built from a pattern
//! matches it and yields the values put into its named levels.

use proptest::prelude::*;

use super::*;

/// One level of a pattern, and a generator of what a received topic has there.
#[derive(Debug, Clone)]
enum Level {
    Literal(String),
    Named(Capture),
    Other(String),
    Plus,
}

const CAPTURES: [(Capture, &str); 4] =
    [(Capture::Grid, "grid"), (Capture::Device, "device"), (Capture::Point, "point"), (Capture::Kind, "kind")];

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        // Anything a literal level may hold: no '/', wildcards, braces or NUL.
        3 => "[^/+#{}\u{0}]{0,8}".prop_map(Level::Literal),
        2 => (0usize..4).prop_map(|i| Level::Named(CAPTURES[i].0)),
        1 => "[a-z_]{1,8}".prop_filter("not a known capture", |n| !CAPTURES.iter().any(|c| c.1 == n)).prop_map(Level::Other),
        1 => Just(Level::Plus),
    ]
}

/// What a received topic may carry in a wildcard level: anything but '/' (and not empty where a
/// capture is wanted).
fn value() -> impl Strategy<Value = String> {
    "[^/\u{0}]{1,10}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary text as a pattern and as a topic: errors are fine, panics are not; a pattern that
    /// parses has one filter level per pattern level.
    #[test]
    fn arbitrary_patterns_and_topics_never_panic(pattern in any::<String>(), topics in prop::collection::vec(any::<String>(), 0..4)) {
        if let Ok(p) = TopicPattern::parse(&pattern) {
            prop_assert_eq!(p.filter().split('/').count(), pattern.split('/').count());
            for t in &topics {
                let _ = p.matches(t);
            }
        }
    }

    /// Pattern-shaped text (levels of wildcards, braces and names) parses or is refused without panic.
    #[test]
    fn pattern_shaped_text_never_panics(levels in prop::collection::vec("[a-z{}+#$]{0,6}|\\{[a-z_]{0,6}\\}", 1..6), topic in "[a-z0-9/$+#]{0,20}") {
        let pattern = levels.join("/");
        if let Ok(p) = TopicPattern::parse(&pattern) {
            let _ = p.matches(&topic);
            prop_assert!(TopicPattern::parse(p.filter()).is_ok(), "the filter of {pattern:?} is {:?}", p.filter());
        }
    }

    /// A topic built from a pattern, with random values in its wildcard levels (and random levels under
    /// a trailing '#'), matches and yields exactly the values of its named levels.
    #[test]
    fn built_topics_match_and_capture(
        levels in prop::collection::vec(level(), 1..7),
        values in prop::collection::vec(value(), 7),
        hash in prop::option::of(prop::collection::vec("[^/\u{0}]{0,6}", 0..3)),
    ) {
        // Each capture at most once, as parse requires.
        let mut seen = Vec::new();
        let levels: Vec<Level> = levels
            .into_iter()
            .filter(|l| match l {
                Level::Named(_) | Level::Other(_) => {
                    let key = format!("{l:?}");
                    let fresh = !seen.contains(&key);
                    seen.push(key);
                    fresh
                }
                _ => true,
            })
            .collect();
        let mut pattern = Vec::new();
        let mut topic = Vec::new();
        // Values of grid, device, point and kind, in the order of CAPTURES.
        let mut expected: [Option<String>; 4] = Default::default();
        for (i, l) in levels.iter().enumerate() {
            // A received topic starting with '$' is a broker topic that wildcards never match.
            let v = if i == 0 { values[i].trim_start_matches('$').to_owned() } else { values[i].clone() };
            let v = if v.is_empty() { "v".to_owned() } else { v };
            match l {
                Level::Literal(s) => {
                    pattern.push(s.clone());
                    topic.push(s.clone());
                }
                Level::Named(c) => {
                    let i = CAPTURES.iter().position(|x| x.0 == *c).unwrap_or_default();
                    pattern.push(format!("{{{}}}", CAPTURES[i].1));
                    topic.push(v.clone());
                    expected[i] = Some(v);
                }
                Level::Other(n) => {
                    pattern.push(format!("{{{n}}}"));
                    topic.push(v);
                }
                Level::Plus => {
                    pattern.push("+".to_owned());
                    topic.push(v);
                }
            }
        }
        if let Some(rest) = &hash {
            pattern.push("#".to_owned());
            topic.extend(rest.iter().cloned());
        }
        let (pattern, topic) = (pattern.join("/"), topic.join("/"));
        // The one pattern of valid levels that parse refuses: the empty one.
        prop_assume!(!pattern.is_empty());
        let p = TopicPattern::parse(&pattern).map_err(TestCaseError::fail)?;
        let got = p.matches(&topic);
        let [grid, device, point, kind] = &expected;
        let expected =
            Captures { grid: grid.as_deref(), device: device.as_deref(), point: point.as_deref(), kind: kind.as_deref() };
        prop_assert_eq!(got, Some(expected), "{} against {}", topic, pattern);
        // The filter sent to the broker matches the same topic.
        let filter = TopicPattern::parse(p.filter()).map_err(TestCaseError::fail)?;
        prop_assert!(filter.matches(&topic).is_some(), "{} against filter {}", topic, p.filter());
        // One level more (without '#') or one level less is not a match.
        if hash.is_none() {
            let longer = format!("{topic}/x");
            prop_assert!(p.matches(&longer).is_none(), "{longer} against {pattern}");
        }
    }
}

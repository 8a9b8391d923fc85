//! Topic filters with named segments: `park/{grid}/meter/{device}/telemetry`.
//!
//! A named segment subscribes as `+` and captures that level of a received topic. Matching borrows from
//! the topic and allocates nothing.

/// What a named segment captures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    Grid,
    Device,
    Point,
    Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Named(Option<Capture>),
    Plus,
    Hash,
}

/// A parsed subscription topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    filter: String,
    segments: Vec<Segment>,
}

/// The named levels of one received topic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Captures<'a> {
    pub grid: Option<&'a str>,
    pub device: Option<&'a str>,
    pub point: Option<&'a str>,
    pub kind: Option<&'a str>,
}

impl TopicPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// Says what is wrong: an empty topic, a wildcard inside a level, `#` before the last level, a
    /// named segment that is not a whole level, or the same name twice.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty topic; expected a filter such as \"park/{grid}/meter/{device}/telemetry\"".into());
        }
        if pattern.len() > 65_535 {
            return Err("topic longer than 65535 bytes".into());
        }
        if pattern.contains('\0') {
            return Err("topic contains a NUL character".into());
        }
        let levels: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(levels.len());
        let mut filter = Vec::with_capacity(levels.len());
        let mut seen = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let seg = match *level {
                "#" if i + 1 == levels.len() => Segment::Hash,
                "#" => return Err(format!("{pattern:?}: '#' must be the last level")),
                "+" => Segment::Plus,
                l if l.starts_with('{') && l.ends_with('}') && l.len() > 2 => {
                    let name = &l[1..l.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                        return Err(format!(
                            "{pattern:?}: {l} is not a valid name; expected lowercase letters and '_'"
                        ));
                    }
                    if seen.contains(&name) {
                        return Err(format!("{pattern:?}: {l} appears twice"));
                    }
                    seen.push(name);
                    Segment::Named(match name {
                        "grid" => Some(Capture::Grid),
                        "device" => Some(Capture::Device),
                        "point" => Some(Capture::Point),
                        "kind" => Some(Capture::Kind),
                        _ => None,
                    })
                }
                l if l.contains(['+', '#']) => {
                    return Err(format!(
                        "{pattern:?}: wildcard inside level {l:?}; expected '+' or '#' to fill a whole level"
                    ))
                }
                l if l.contains(['{', '}']) => {
                    return Err(format!(
                        "{pattern:?}: {l:?} is not a whole named level; expected a level like {{device}}"
                    ))
                }
                l => Segment::Literal(l.to_owned()),
            };
            filter.push(match &seg {
                Segment::Literal(l) => l.clone(),
                Segment::Named(_) | Segment::Plus => "+".to_owned(),
                Segment::Hash => "#".to_owned(),
            });
            segments.push(seg);
        }
        Ok(Self { filter: filter.join("/"), segments })
    }

    /// The MQTT filter to subscribe to (named levels become `+`).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether the pattern has this named level.
    pub fn has(&self, capture: Capture) -> bool {
        self.segments.contains(&Segment::Named(Some(capture)))
    }

    /// Matches a received topic, returning its named levels.
    pub fn matches<'a>(&self, topic: &'a str) -> Option<Captures<'a>> {
        let mut caps = Captures::default();
        let mut levels = topic.split('/');
        for (i, seg) in self.segments.iter().enumerate() {
            if *seg == Segment::Hash {
                // '#' also matches the parent level itself ("a/#" matches "a"), and never a '$' topic at
                // the first level.
                return (i > 0 || !topic.starts_with('$')).then_some(caps);
            }
            let level = levels.next()?;
            match seg {
                Segment::Literal(l) => {
                    if l != level {
                        return None;
                    }
                }
                Segment::Plus | Segment::Named(None) => {
                    if i == 0 && level.starts_with('$') {
                        return None;
                    }
                }
                Segment::Named(Some(c)) => {
                    if level.is_empty() || (i == 0 && level.starts_with('$')) {
                        return None;
                    }
                    let slot = match c {
                        Capture::Grid => &mut caps.grid,
                        Capture::Device => &mut caps.device,
                        Capture::Point => &mut caps.point,
                        Capture::Kind => &mut caps.kind,
                    };
                    *slot = Some(level);
                }
                Segment::Hash => unreachable!("handled above"),
            }
        }
        levels.next().is_none().then_some(caps)
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_levels_become_plus() {
        let p = TopicPattern::parse("park/{grid}/meter/{device}/telemetry").unwrap();
        assert_eq!(p.filter(), "park/+/meter/+/telemetry");
        let c = p.matches("park/g1/meter/m-1/telemetry").unwrap();
        assert_eq!((c.grid, c.device), (Some("g1"), Some("m-1")));
        assert!(p.matches("park/g1/meter/m-1").is_none());
        assert!(p.matches("park/g1/meter/m-1/telemetry/x").is_none());
        assert!(p.matches("park/g1/water/m-1/telemetry").is_none());
        assert!(p.matches("park//meter/m-1/telemetry").is_none(), "an empty device level is not a device");
    }

    #[test]
    fn hash_and_plus() {
        let p = TopicPattern::parse("park/{device}/#").unwrap();
        assert_eq!(p.filter(), "park/+/#");
        assert_eq!(p.matches("park/d1/a/b").unwrap().device, Some("d1"));
        assert_eq!(p.matches("park/d1").unwrap().device, Some("d1"));
        let p = TopicPattern::parse("#").unwrap();
        assert!(p.matches("$SYS/broker").is_none());
        assert!(p.matches("a/b").is_some());
        let p = TopicPattern::parse("+/{point}").unwrap();
        assert_eq!(p.matches("x/ua").unwrap().point, Some("ua"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a/#/b", "a/b#", "a+/b", "a/{dev", "a/{device}x", "a/{Device}", "a/{device}/{device}"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

//! The store schema as data: every measurement the gateway writes (or, for `energy_daily`, that its
//! reports write) with its tag keys and field keys and types, built from the encoder's own constants
//! and from the registry the encoder is built from, so it cannot drift from the lines. The Grafana
//! dashboards are tested against it (`tests/tests/e2e/grafana.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    device_tags, AUDIT, AUDIT_FIELDS, AUDIT_TAGS, ENERGY_DAILY, ENERGY_DAILY_DEVICE_TAGS, ENERGY_DAILY_FIELDS,
    ENERGY_DAILY_TAGS, ENERGY_DAILY_TOU_BUCKETS, ENERGY_DAILY_TOU_PREFIX, GATEWAY, GATEWAY_FIELDS, GATEWAY_TAGS,
    INCIDENT, INCIDENT_FIELDS, INCIDENT_TAGS,
};
use crate::config::PointKind;
use crate::model::Registry;

/// The type a field is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Float,
    Int,
    Bool,
    String,
}

impl FieldType {
    /// The type a point of this kind is written with.
    pub fn of(kind: PointKind) -> Self {
        match kind {
            PointKind::Float => Self::Float,
            PointKind::Int => Self::Int,
            PointKind::Bool => Self::Bool,
        }
    }

    /// True for types a store can graph (everything but strings).
    pub fn is_numeric(self) -> bool {
        self != Self::String
    }
}

/// One field key and its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaField {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
}

/// One measurement: its tag keys (sorted; a line may leave out a tag whose value is empty) and its
/// field keys (a line carries some of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measurement {
    pub name: String,
    pub tags: Vec<String>,
    pub fields: Vec<SchemaField>,
}

impl Measurement {
    fn new(name: &str, tags: impl IntoIterator<Item = String>, fields: &[(&str, FieldType)]) -> Self {
        let tags: BTreeSet<String> = tags.into_iter().collect();
        Self {
            name: name.to_owned(),
            tags: tags.into_iter().collect(),
            fields: fields.iter().map(|(k, t)| SchemaField { name: (*k).to_owned(), kind: *t }).collect(),
        }
    }

    /// The type of field `name`, if the measurement has it.
    pub fn field(&self, name: &str) -> Option<FieldType> {
        self.fields.iter().find(|f| f.name == name).map(|f| f.kind)
    }

    /// True when lines of this measurement may carry tag `name`.
    pub fn has_tag(&self, name: &str) -> bool {
        self.tags.iter().any(|t| t == name)
    }
}

/// Every measurement written for one configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schema {
    pub measurements: Vec<Measurement>,
}

impl Schema {
    /// The measurement called `name`.
    pub fn get(&self, name: &str) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.name == name)
    }
}

/// The schema of everything written for `registry`: one measurement per device category that has
/// points (tags [`super::SAMPLE_TAGS`] and the configured tags of its devices, a field per point
/// name), then `incident`, `audit`, `gateway` and `energy_daily`.
pub fn schema(registry: &Registry) -> Schema {
    let site = registry.site.id.as_str();
    // Category → (tag keys, fields in first-seen order). Devices without points write no samples.
    type Columns<'a> = (BTreeSet<String>, Vec<(&'a str, FieldType)>);
    let mut samples: BTreeMap<&str, Columns> = BTreeMap::new();
    for d in registry.devices.iter().filter(|d| !d.points.is_empty()) {
        let (tags, fields) = samples.entry(&d.category).or_default();
        tags.extend(device_tags(registry, d, site).into_iter().map(|(k, _)| k.to_owned()));
        for p in &registry.points[d.points.start as usize..d.points.end as usize] {
            if !fields.iter().any(|(n, _)| *n == p.name) {
                fields.push((&p.name, FieldType::of(p.kind)));
            }
        }
    }
    let mut measurements: Vec<Measurement> =
        samples.into_iter().map(|(category, (tags, fields))| Measurement::new(category, tags, &fields)).collect();
    let owned = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
    measurements.push(Measurement::new(INCIDENT, owned(&INCIDENT_TAGS), &INCIDENT_FIELDS));
    measurements.push(Measurement::new(AUDIT, owned(&AUDIT_TAGS), &AUDIT_FIELDS));
    measurements.push(Measurement::new(GATEWAY, owned(&GATEWAY_TAGS), &GATEWAY_FIELDS));
    // energy_daily: written by the reports, listed from the constants its writer uses.
    let tou: Vec<String> = ENERGY_DAILY_TOU_BUCKETS.iter().map(|b| format!("{ENERGY_DAILY_TOU_PREFIX}{b}")).collect();
    let mut energy_fields: Vec<(&str, FieldType)> = ENERGY_DAILY_FIELDS.to_vec();
    energy_fields.extend(tou.iter().map(|f| (f.as_str(), FieldType::Float)));
    let energy_tags = owned(&ENERGY_DAILY_TAGS).into_iter().chain(owned(&ENERGY_DAILY_DEVICE_TAGS));
    measurements.push(Measurement::new(ENERGY_DAILY, energy_tags, &energy_fields));
    Schema { measurements }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let toml = r#"
[site]
id = "xh"
[[grids]]
id = "g1"
[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
tags = { building = "B1", empty = "" }
points = [{ name = "ua" }, { name = "door_open", kind = "bool" }]
[[devices]]
id = "m2"
grid = "g1"
category = "electrical"
tags = { tenant = "acme" }
points = [{ name = "ua" }, { name = "count", kind = "int" }]
[[devices]]
id = "door"
grid = "g1"
category = "access"
"#;
        let c = crate::config::from_str(toml, std::path::Path::new("t.toml"), std::path::Path::new(".")).unwrap();
        Registry::from_config(&c)
    }

    #[test]
    fn lists_each_category_with_the_tags_and_fields_of_its_devices() {
        let s = schema(&registry());
        let names: Vec<&str> = s.measurements.iter().map(|m| m.name.as_str()).collect();
        // Devices without points (access readers) write no samples.
        assert_eq!(names, ["electrical", "incident", "audit", "gateway", "energy_daily"]);
        let e = s.get("electrical").unwrap();
        assert_eq!(e.tags, ["building", "device", "grid", "site", "tenant"]);
        let fields: Vec<(&str, FieldType)> = e.fields.iter().map(|f| (f.name.as_str(), f.kind)).collect();
        assert_eq!(fields, [("ua", FieldType::Float), ("door_open", FieldType::Bool), ("count", FieldType::Int)]);
        let g = s.get("gateway").unwrap();
        assert_eq!(g.tags, ["site"]);
        assert_eq!(g.field("incident_lag"), Some(FieldType::Int));
        let d = s.get("energy_daily").unwrap();
        assert_eq!(d.tags, ["building", "device", "grid", "point", "site", "tenant"]);
        for f in ["kwh", "peak_kw", "gap_minutes", "tou_sharp", "tou_peak", "tou_flat", "tou_valley"] {
            assert_eq!(d.field(f), Some(FieldType::Float), "{f}");
        }
        assert_eq!(s.get("incident").unwrap().field("message"), Some(FieldType::String));
        assert!(s.get("incident").unwrap().has_tag("severity"));
    }
}

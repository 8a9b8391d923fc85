//! Which rules watch which device and point (`parkwatch rules coverage`), and the blind spots
//! `parkwatch check` warns about: points that no alarm rule watches and that do not say why.
//!
//! Quality rules (category `equipment`) watch nearly everything for staleness and plausibility, so
//! they are listed but do not count as cover: a residual current watched only for being stuck still
//! raises no fire warning.

use serde::Serialize;

use super::rules::{Rule, Watch};
use crate::model::{DeviceId, Registry};

/// The rules that watch one point of a device.
#[derive(Debug, Clone, Serialize)]
pub struct PointCoverage {
    pub name: String,
    pub unit: String,
    /// Alarm rules (any category but `equipment` and `system`) that watch it.
    pub alarms: Vec<String>,
    /// Quality and equipment rules that watch it.
    pub quality: Vec<String>,
    /// Why no rule watches it, when the profile or the config says so.
    pub unwatched: Option<String>,
    /// Rules that watch a point of this name but not on this device, and why not.
    pub not_applied: Vec<String>,
}

/// One device's coverage.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceCoverage {
    pub device: String,
    pub grid: String,
    pub category: String,
    pub points: Vec<PointCoverage>,
    /// Rules about the device as a whole (silence, its events).
    pub device_rules: Vec<String>,
}

impl DeviceCoverage {
    /// Points without an alarm rule that do not say why: blind spots.
    pub fn blind_spots(&self) -> impl Iterator<Item = &PointCoverage> {
        self.points.iter().filter(|p| p.alarms.is_empty() && p.unwatched.is_none())
    }
}

impl Watch {
    /// Why the rule's filters leave this device out (`None`: it applies). Point names are not checked.
    pub fn excludes(&self, registry: &Registry, device: DeviceId) -> Option<String> {
        let dev = registry.device(device);
        if !self.categories.is_empty() && !self.categories.contains(&dev.category) {
            return Some(format!("only for categories {}", self.categories.join(", ")));
        }
        if !self.grids.is_empty() && !self.grids.contains(&registry.grid(dev.grid).id) {
            return Some(format!("only for grids {}", self.grids.join(", ")));
        }
        let missing: Vec<String> = self
            .tags
            .iter()
            .filter(|(k, v)| dev.tags.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        if !missing.is_empty() {
            return Some(format!("needs tag {}", missing.join(", ")));
        }
        None
    }
}

fn is_alarm(rule: &Rule) -> bool {
    !matches!(rule.category.as_str(), "equipment" | "system")
}

/// For every configured device and point, the rules that watch it.
pub fn coverage(rules: &[Rule], registry: &Registry) -> Vec<DeviceCoverage> {
    let mut out = Vec::with_capacity(registry.devices.len());
    for (di, dev) in registry.devices.iter().enumerate() {
        let device = DeviceId(di as u32);
        let mut points: Vec<PointCoverage> = dev
            .points
            .clone()
            .map(|p| {
                let info = &registry.points[p as usize];
                PointCoverage {
                    name: info.name.clone(),
                    unit: info.unit.clone(),
                    alarms: Vec::new(),
                    quality: Vec::new(),
                    unwatched: info.unwatched.clone(),
                    not_applied: Vec::new(),
                }
            })
            .collect();
        let events: Vec<Option<&str>> =
            dev.points.clone().map(|p| registry.points[p as usize].event.as_deref()).collect();
        let mut device_rules = Vec::new();
        for rule in rules {
            let w = &rule.watch;
            let excluded = w.excludes(registry, device);
            let mut watched_any = false;
            for (pc, event) in points.iter_mut().zip(&events) {
                let named = w.points.contains(&pc.name) || event.is_some_and(|e| w.events.iter().any(|x| x == e));
                if !named {
                    continue;
                }
                watched_any = true;
                let unit_off = rule
                    .units
                    .get(&pc.name)
                    .filter(|u| !pc.unit.is_empty() && !super::rules::same_unit(&pc.unit, u))
                    .map(|u| format!("point in {:?}, rule limits in {u:?}", pc.unit));
                match excluded.as_ref().or(unit_off.as_ref()) {
                    Some(why) => pc.not_applied.push(format!("{} ({why})", rule.id)),
                    None if is_alarm(rule) => pc.alarms.push(rule.id.clone()),
                    None => pc.quality.push(rule.id.clone()),
                }
            }
            let whole_device = w.points.is_empty() && !watched_any;
            if whole_device && excluded.is_none() {
                device_rules.push(rule.id.clone());
            }
        }
        out.push(DeviceCoverage {
            device: dev.id.clone(),
            grid: registry.grid(dev.grid).id.clone(),
            category: dev.category.clone(),
            points,
            device_rules,
        });
    }
    out
}

/// One warning per point that no alarm rule watches and that does not say why.
pub fn warnings(coverage: &[DeviceCoverage]) -> Vec<String> {
    let mut out = Vec::new();
    for d in coverage {
        for p in d.blind_spots() {
            let mut w =
                format!("device \"{}\" ({}): point \"{}\" is watched by no alarm rule", d.device, d.category, p.name);
            if !p.not_applied.is_empty() {
                w.push_str(&format!("; not applied here: {}", p.not_applied.join(", ")));
            }
            w.push_str("; add a rule, fix the device's tags, or say why with `unwatched = \"...\"` on the point");
            out.push(w);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::packs::BUILTIN;
    use crate::core::rules::{self, Limits};

    fn builtin_rules() -> Vec<Rule> {
        let sources: Vec<(String, String)> = BUILTIN.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned())).collect();
        rules::load(&sources, Limits::default()).expect("the shipped packs load").rules
    }

    /// A site with one device per shipped profile, as a park would wire it (meters on a 380 V supply).
    fn profiled_site() -> Registry {
        let mut text = String::from(
            "[site]\nid = \"t\"\n[[grids]]\nid = \"g1\"\n[[modbus.connections]]\nid = \"bus\"\nkind = \"tcp\"\n\
             host = \"127.0.0.1\"\nport = 502\n",
        );
        for (name, _) in crate::source::modbus::profile::BUILTIN {
            let category =
                if name.starts_with("noise") || name.starts_with("pm") { "environment" } else { "electrical" };
            text.push_str(&format!(
                "[[devices]]\nid = \"{name}\"\ngrid = \"g1\"\ncategory = \"{category}\"\ntags = {{ voltage = \"380\" }}\n\
                 modbus = {{ connection = \"bus\", unit = 1, profile = \"{name}\" }}\n"
            ));
        }
        let config = crate::config::from_str(&text, std::path::Path::new("(test)"), std::path::Path::new("."))
            .expect("the test site is valid");
        Registry::from_config(&config)
    }

    #[test]
    fn every_point_of_every_shipped_profile_is_watched_or_says_why() {
        let cov = coverage(&builtin_rules(), &profiled_site());
        assert_eq!(cov.len(), crate::source::modbus::profile::BUILTIN.len());
        let blind: Vec<String> =
            cov.iter().flat_map(|d| d.blind_spots().map(move |p| format!("{}.{}", d.device, p.name))).collect();
        assert!(blind.is_empty(), "points of shipped profiles that no alarm rule watches: {blind:?}");
        let detector = cov.iter().find(|d| d.device == "fire-detector").unwrap();
        let rules_of = |name: &str| detector.points.iter().find(|p| p.name == name).unwrap().alarms.clone();
        assert_eq!(rules_of("alarm_residual"), ["electrical.detector_alarm"]);
        assert_eq!(rules_of("fault"), ["electrical.detector_fault"]);
        assert_eq!(rules_of("cable_temp_b"), ["electrical.cable_temperature"]);
        assert_eq!(rules_of("arc_fault"), ["electrical.arc_fault"]);
    }

    #[test]
    fn a_meter_without_its_voltage_tag_is_a_blind_spot_that_names_the_tag() {
        let config = crate::config::from_str(
            "[site]\nid = \"t\"\n[[grids]]\nid = \"g1\"\n[[devices]]\nid = \"m1\"\ngrid = \"g1\"\n\
             category = \"electrical\"\npoints = [{ name = \"ua\", unit = \"V\" }, { name = \"p\", unwatched = \"no limit\" }]\n",
            std::path::Path::new("(test)"),
            std::path::Path::new("."),
        )
        .unwrap();
        let cov = coverage(&builtin_rules(), &Registry::from_config(&config));
        let w = warnings(&cov);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("\"ua\"") && w[0].contains("needs tag voltage = \"220\""), "{}", w[0]);
        assert!(cov[0].device_rules.contains(&"quality.device_silent".to_owned()));
    }
}

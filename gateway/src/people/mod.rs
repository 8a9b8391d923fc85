//! The people side of the park's safety organisation: who is who, who is on duty in a grid at an
//! instant (`duty.rs`), the patrol checkpoints with their due slots, missed-patrol incidents and
//! coverage (`patrol.rs`), and the emergency plans rules name.
//!
//! Everything here is pure: time comes in as an argument (UTC ns) with the site's time zone; no
//! clock is read and no I/O is done. The core owns the live patrol tracker; the API asks this room
//! who is on duty and what a plan says.
//!
//! Owns: the resolved people directory, rosters, patrol schedules and plans. May import: `model`,
//! `config`.

pub mod duty;
pub mod patrol;

use std::collections::BTreeMap;

use chrono_tz::Tz;

use crate::config::{Config, Person, Plan};

pub use self::duty::{Duty, Roster};

/// The safety organisation of a site as the config describes it, resolved once at start.
#[derive(Debug, Clone)]
pub struct Directory {
    /// The site's time zone: shifts, windows and dates are local to it.
    pub tz: Tz,
    people: BTreeMap<String, Person>,
    rosters: BTreeMap<String, Roster>,
    plans: BTreeMap<String, Plan>,
    grids: BTreeMap<String, GridStaff>,
    /// Person id of the safety manager.
    pub safety_manager: Option<String>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            tz: chrono_tz::Asia::Shanghai,
            people: BTreeMap::new(),
            rosters: BTreeMap::new(),
            plans: BTreeMap::new(),
            grids: BTreeMap::new(),
            safety_manager: None,
        }
    }
}

/// Who answers for one grid.
#[derive(Debug, Clone, Default)]
pub struct GridStaff {
    /// Person id of the grid supervisor (网格长).
    pub supervisor: Option<String>,
    /// Person ids of the grid's officers.
    pub officers: Vec<String>,
}

impl Directory {
    /// Resolves a validated configuration; references validation would refuse are skipped.
    pub fn from_config(config: &Config) -> Self {
        let tz = config.site.timezone.parse().unwrap_or(chrono_tz::Asia::Shanghai);
        Self {
            tz,
            people: config.people.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            rosters: config.rosters.iter().filter_map(|r| Some((r.grid.clone(), Roster::from_config(r)?))).collect(),
            plans: config.plans.iter().map(|p| (p.id.clone(), p.clone())).collect(),
            grids: config
                .grids
                .iter()
                .map(|g| (g.id.clone(), GridStaff { supervisor: g.supervisor.clone(), officers: g.officers.clone() }))
                .collect(),
            safety_manager: config.site.safety_manager.clone(),
        }
    }

    /// The person with id `id`.
    pub fn person(&self, id: &str) -> Option<&Person> {
        self.people.get(id)
    }

    /// The plan with id `id`.
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.get(id)
    }

    /// The staff of grid `grid`.
    pub fn grid(&self, grid: &str) -> Option<&GridStaff> {
        self.grids.get(grid)
    }

    /// The roster of grid `grid`, when it has one.
    pub fn roster(&self, grid: &str) -> Option<&Roster> {
        self.rosters.get(grid)
    }

    /// Who is on duty in `grid` at `at` (UTC ns); `None` when the grid has no roster.
    pub fn duty(&self, grid: &str, at: i64) -> Option<Duty> {
        self.rosters.get(grid).map(|r| duty::on_duty(r, self.tz, at))
    }
}

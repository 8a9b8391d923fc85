//! Who the people behind a role are: the seam between notifications and the site's organisation.
//!
//! Routes and receivers name roles (the on-duty officers of the incident's grid, the grid's
//! supervisor, the safety manager); a [`Directory`] turns them into people with mobiles and mail
//! addresses when a message is planned. [`SiteDirectory`] answers from the site's organisation
//! (`[[people]]`, grid staff, `[[rosters]]`) and falls back to `[[notify.contacts]]`
//! ([`StaticDirectory`]) where the organisation names nobody.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::notify::{Contact, ContactRole, PeopleRef};

/// A person a message can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    pub mobile: Option<String>,
    pub email: Option<String>,
    /// WeCom user id, for `<@userid>` mentions in markdown.
    pub wecom_id: Option<String>,
    /// Feishu user id, for `<at user_id="…">` mentions.
    pub feishu_id: Option<String>,
}

/// Resolves roles to people.
pub trait Directory: Send + Sync {
    /// The officers on duty in `grid` at `at` (UTC ns).
    fn on_duty(&self, grid: &str, at: i64) -> Vec<Person>;
    /// The grid's supervisor.
    fn supervisor(&self, grid: &str) -> Option<Person>;
    /// The site's safety manager.
    fn safety_manager(&self) -> Option<Person>;

    /// The people a role names for an incident of `grid` at `at`.
    fn resolve(&self, role: PeopleRef, grid: &str, at: i64) -> Vec<Person> {
        match role {
            PeopleRef::OnDuty => self.on_duty(grid, at),
            PeopleRef::Supervisor => self.supervisor(grid).into_iter().collect(),
            PeopleRef::SafetyManager => self.safety_manager().into_iter().collect(),
        }
    }
}

/// A directory from `[[notify.contacts]]`: every officer of a grid counts as on duty.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    contacts: Vec<Contact>,
}

impl StaticDirectory {
    /// The directory of these contacts.
    pub fn new(contacts: Vec<Contact>) -> Self {
        Self { contacts }
    }

    fn with_role<'a>(&'a self, role: ContactRole, grid: Option<&'a str>) -> impl Iterator<Item = Person> + 'a {
        self.contacts.iter().filter(move |c| c.role == role && grid.is_none_or(|g| c.grids.iter().any(|x| x == g))).map(
            |c| Person {
                name: c.name.clone(),
                mobile: c.mobile.clone(),
                email: c.email.clone(),
                wecom_id: c.wecom_id.clone(),
                feishu_id: c.feishu_id.clone(),
            },
        )
    }
}

impl Directory for StaticDirectory {
    fn on_duty(&self, grid: &str, _at: i64) -> Vec<Person> {
        self.with_role(ContactRole::Officer, Some(grid)).collect()
    }

    fn supervisor(&self, grid: &str) -> Option<Person> {
        self.with_role(ContactRole::Supervisor, Some(grid)).next()
    }

    fn safety_manager(&self) -> Option<Person> {
        self.with_role(ContactRole::SafetyManager, None).next()
    }
}

/// The site's organisation as notifications see it: the roster says who is on duty; the grids name
/// supervisors; the site names its safety manager. Where the organisation names nobody, the
/// `[[notify.contacts]]` answer, so a site that only lists contacts still reaches someone.
#[derive(Debug, Clone)]
pub struct SiteDirectory {
    site: Arc<crate::people::Directory>,
    contacts: StaticDirectory,
}

impl SiteDirectory {
    /// The directory of `site`, with `contacts` where it names nobody.
    pub fn new(site: Arc<crate::people::Directory>, contacts: Vec<Contact>) -> Self {
        Self { site, contacts: StaticDirectory::new(contacts) }
    }

    fn person(&self, id: &str) -> Option<Person> {
        self.site.person(id).map(|p| Person {
            name: p.name.clone(),
            mobile: Some(p.mobile.clone()).filter(|m| !m.is_empty()),
            email: p.email.clone(),
            wecom_id: p.wecom_user.clone(),
            feishu_id: p.feishu_user.clone(),
        })
    }

    fn people(&self, ids: &[String]) -> Vec<Person> {
        ids.iter().filter_map(|id| self.person(id)).collect()
    }
}

impl Directory for SiteDirectory {
    /// The roster's shift at `at`; when the roster staffs nobody then (a gap in the roster) or the grid
    /// has no roster, all of the grid's officers, because a gap must never silence an alarm.
    fn on_duty(&self, grid: &str, at: i64) -> Vec<Person> {
        if let Some(d) = self.site.duty(grid, at) {
            let on = self.people(&d.people);
            if !on.is_empty() {
                return on;
            }
        }
        if let Some(staff) = self.site.grid(grid) {
            let all = self.people(&staff.officers);
            if !all.is_empty() {
                return all;
            }
        }
        self.contacts.on_duty(grid, at)
    }

    fn supervisor(&self, grid: &str) -> Option<Person> {
        self.site
            .grid(grid)
            .and_then(|g| g.supervisor.as_deref())
            .and_then(|id| self.person(id))
            .or_else(|| self.contacts.supervisor(grid))
    }

    fn safety_manager(&self) -> Option<Person> {
        self.site.safety_manager.as_deref().and_then(|id| self.person(id)).or_else(|| self.contacts.safety_manager())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(name: &str, role: ContactRole, grids: &[&str]) -> Contact {
        Contact {
            name: name.into(),
            mobile: Some(format!("1380000{:04}", name.len())),
            email: Some(format!("{name}@park.example")),
            wecom_id: None,
            feishu_id: None,
            role,
            grids: grids.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn roles_resolve_per_grid() {
        let d = StaticDirectory::new(vec![
            contact("li", ContactRole::Officer, &["g1"]),
            contact("wang", ContactRole::Officer, &["g1", "g2"]),
            contact("zhao", ContactRole::Supervisor, &["g2"]),
            contact("chen", ContactRole::SafetyManager, &[]),
        ]);
        let names = |v: Vec<Person>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(d.resolve(PeopleRef::OnDuty, "g1", 0)), ["li", "wang"]);
        assert_eq!(names(d.resolve(PeopleRef::OnDuty, "g2", 0)), ["wang"]);
        assert_eq!(names(d.resolve(PeopleRef::Supervisor, "g1", 0)), Vec::<String>::new());
        assert_eq!(names(d.resolve(PeopleRef::Supervisor, "g2", 0)), ["zhao"]);
        assert_eq!(names(d.resolve(PeopleRef::SafetyManager, "g1", 0)), ["chen"]);
    }

    /// UTC ns of a local time in Shanghai.
    fn shanghai(local: &str) -> i64 {
        use chrono::TimeZone;
        let t = chrono::NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M").unwrap();
        chrono_tz::Asia::Shanghai.from_local_datetime(&t).unwrap().timestamp_nanos_opt().unwrap()
    }

    #[test]
    fn the_site_directory_follows_the_roster_and_falls_back_to_contacts() {
        let text = include_str!("../../../configs/demo.toml");
        let config = crate::config::from_str(
            text,
            std::path::Path::new("demo.toml"),
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs")),
        )
        .unwrap();
        let site = Arc::new(crate::people::Directory::from_config(&config));
        let d = SiteDirectory::new(site, vec![contact("backup", ContactRole::Officer, &["g9"])]);
        let names = |v: Vec<Person>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
        // 2026-06-03 is a Wednesday: 张伟 by day, 李娜 by night; the night runs past midnight.
        assert_eq!(names(d.on_duty("g1", shanghai("2026-06-03 10:00"))), ["张伟"]);
        assert_eq!(names(d.on_duty("g1", shanghai("2026-06-04 02:00"))), ["李娜"]);
        // The dated override: the supervisor takes the National Day shift.
        assert_eq!(names(d.on_duty("g1", shanghai("2026-10-01 09:00"))), ["王强"]);
        let zhang = d.on_duty("g1", shanghai("2026-06-03 10:00")).remove(0);
        assert_eq!((zhang.mobile.as_deref(), zhang.wecom_id.as_deref()), (Some("13800000011"), Some("ZhangWei")));
        assert_eq!(d.supervisor("g1").map(|p| p.name), Some("王强".into()));
        assert_eq!(d.safety_manager().map(|p| p.name), Some("周敏".into()));
        // A grid the organisation does not know is answered by the contacts.
        assert_eq!(names(d.on_duty("g9", 0)), ["backup"]);
    }
}

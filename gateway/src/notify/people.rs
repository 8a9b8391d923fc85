//! Who the people behind a role are: the seam between notifications and the site's organisation.
//!
//! Routes and receivers name roles (the on-duty officers of the incident's grid, the grid's
//! supervisor, the safety manager); a [`Directory`] turns them into people with mobiles and mail
//! addresses when a message is planned. [`StaticDirectory`] answers from `[[notify.contacts]]`; a
//! roster-backed directory replaces it by implementing the same trait.

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
}

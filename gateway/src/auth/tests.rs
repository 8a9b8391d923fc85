use super::*;

/// A service over a fresh `auth.db`, recording in `audit.db` beside it.
fn auth(settings: Settings) -> (tempfile::TempDir, Auth) {
    let dir = tempfile::tempdir().unwrap();
    let (log, _writer) = AuditLog::open(&dir.path().join("audit.db"), Default::default()).unwrap();
    let auth = Auth::open(&dir.path().join("auth.db"), settings, log).unwrap();
    (dir, auth)
}

fn by(auth: &Auth) -> admin::By<'_> {
    admin::By { actor: "cli:test", audit: &auth.inner.audit }
}

fn grids(g: &[&str]) -> Grids {
    Some(g.iter().map(|s| (*s).to_owned()).collect())
}

fn known() -> Vec<String> {
    vec!["g1".into(), "g2".into()]
}

fn conn(dir: &tempfile::TempDir) -> Connection {
    store::open(&dir.path().join("auth.db")).unwrap()
}

#[test]
fn passwords_are_argon2id_and_verify() {
    let h = hash_password("correct horse battery").unwrap();
    assert!(h.starts_with("$argon2id$"), "{h}");
    assert!(!h.contains("correct horse"));
    assert!(verify_password("correct horse battery", &h));
    assert!(!verify_password("correct horse batterx", &h));
    assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    assert!(!verify_password("x", "not a hash"));
}

#[test]
fn roles_and_scopes_are_checked() {
    assert!(Role::Admin.check_grids(&None, &known()).is_ok());
    assert!(Role::Admin.check_grids(&grids(&["g1"]), &known()).is_err());
    assert!(Role::SafetyManager.check_grids(&grids(&["g1"]), &known()).is_err());
    assert!(Role::Officer.check_grids(&None, &known()).is_err());
    assert!(Role::Supervisor.check_grids(&grids(&["g1", "g2"]), &known()).is_ok());
    let e = Role::Officer.check_grids(&grids(&["g7"]), &known()).unwrap_err().to_string();
    assert_eq!(e, "grid \"g7\" is not defined (known grids: g1, g2)");
    assert!(Role::Viewer.check_grids(&None, &known()).is_ok());
    assert!(Role::Viewer.check_grids(&grids(&["g2"]), &known()).is_ok());
    assert!(Role::Viewer.check_grids(&Some(vec![]), &known()).is_err());
    for r in Role::ALL {
        assert_eq!(Role::parse(r.as_str()), Some(r));
    }
    assert!(Role::Viewer < Role::Officer && Role::Officer < Role::Supervisor && Role::Supervisor < Role::SafetyManager);
    assert!(Role::SafetyManager < Role::Admin);
}

#[test]
fn the_first_user_is_an_admin_and_passwords_are_checked() {
    let (dir, auth) = auth(Settings::default());
    let c = conn(&dir);
    let e = admin::add_user(&c, "li", Role::Officer, &grids(&["g1"]), "long enough pw", &known(), by(&auth));
    assert!(matches!(e, Err(AuthError::FirstNotAdmin)), "{e:?}");
    let e = admin::add_user(&c, "root", Role::Admin, &None, "short", &known(), by(&auth));
    assert!(matches!(e, Err(AuthError::WeakPassword)), "{e:?}");
    let e = admin::add_user(&c, "rootrootroot", Role::Admin, &None, "RootRootRoot", &known(), by(&auth));
    assert!(matches!(e, Err(AuthError::PasswordIsName)), "{e:?}");
    let e = admin::add_user(&c, "bad name", Role::Admin, &None, "long enough pw", &known(), by(&auth));
    assert!(matches!(e, Err(AuthError::BadName(_))), "{e:?}");
    admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by(&auth)).unwrap();
    admin::add_user(&c, "li", Role::Officer, &grids(&["g1"]), "long enough pw", &known(), by(&auth)).unwrap();
    let e = admin::add_user(&c, "li", Role::Officer, &grids(&["g1"]), "long enough pw", &known(), by(&auth));
    assert!(matches!(e, Err(AuthError::UserExists(_))), "{e:?}");
    let users = store::users(&c).unwrap();
    assert_eq!(
        users.iter().map(|u| (u.name.as_str(), u.role)).collect::<Vec<_>>(),
        [("li", Role::Officer), ("root", Role::Admin)]
    );
    assert_eq!(users[0].grids, grids(&["g1"]));
    assert!(users.iter().all(|u| !u.hash.contains("long enough")));
}

#[test]
fn tokens_verify_by_hash_and_end_when_revoked_or_expired() {
    let (dir, auth) = auth(Settings::default());
    let c = conn(&dir);
    let now = crate::model::time::now_ns();
    let (text, t) = admin::create_token(&c, "scada", Role::Viewer, grids(&["g2"]), None, &known(), by(&auth)).unwrap();
    assert!(text.starts_with(&format!("pwt_{}_", t.id)) && text.len() == 4 + 16 + 1 + 64, "{text}");
    let stored = store::token(&c, &t.id).unwrap().unwrap();
    assert_eq!(stored.hash, sha256(text.as_bytes()).to_vec());
    assert!(stored.last_used_at.is_none());
    let who = auth.bearer(&text, now).unwrap();
    assert_eq!(who, Identity { name: "token:scada".into(), role: Role::Viewer, grids: grids(&["g2"]) });
    assert!(who.sees("g2") && !who.sees("g1"));
    assert!(store::token(&c, &t.id).unwrap().unwrap().last_used_at.is_some(), "last use recorded");
    // The same id with another secret, a truncated token, garbage.
    let forged = format!("{}{}", &text[..text.len() - 1], if text.ends_with('0') { '1' } else { '0' });
    assert_eq!(auth.bearer(&forged, now), Err(Denied::Unknown));
    assert_eq!(auth.bearer(&text[..text.len() - 1], now), Err(Denied::Unknown));
    assert_eq!(auth.bearer("Bearer", now), Err(Denied::Unknown));

    let (expiring, _) =
        admin::create_token(&c, "short", Role::Admin, None, Some(now + 1_000), &known(), by(&auth)).unwrap();
    assert!(auth.bearer(&expiring, now).is_ok());
    assert_eq!(auth.bearer(&expiring, now + 1_000), Err(Denied::Ended));

    let (revoked, r) = admin::create_token(&c, "old", Role::Admin, None, None, &known(), by(&auth)).unwrap();
    admin::revoke_token(&c, &r.id, by(&auth)).unwrap();
    assert_eq!(auth.bearer(&revoked, now), Err(Denied::Ended));
    assert!(matches!(admin::revoke_token(&c, "nope", by(&auth)), Err(AuthError::UnknownToken(_))));
}

#[tokio::test]
async fn sessions_need_csrf_for_changes_and_end_on_logout_idle_or_disable() {
    let settings = Settings { session_idle: Duration::from_millis(300), ..Settings::default() };
    let (dir, auth) = auth(settings);
    let c = conn(&dir);
    admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by(&auth)).unwrap();
    let s = auth.login("root", "long enough pw", "127.0.0.1").await.unwrap();
    assert_eq!(s.identity.role, Role::Admin);
    assert!(auth.session(&s.id, None, false).is_ok(), "reads need no CSRF token");
    assert_eq!(auth.session(&s.id, None, true), Err(Denied::Csrf));
    assert_eq!(auth.session(&s.id, Some("wrong"), true), Err(Denied::Csrf));
    assert!(auth.session(&s.id, Some(&s.csrf), true).is_ok());
    assert_eq!(auth.session(&s.csrf, Some(&s.csrf), true), Err(Denied::Unknown));
    assert!(auth.logout(&s.id));
    assert_eq!(auth.session(&s.id, None, false), Err(Denied::Unknown));

    let s = auth.login("root", "long enough pw", "127.0.0.1").await.unwrap();
    let idle = Instant::now() + Duration::from_millis(300);
    // Waits on the session's own idle deadline, which is the behaviour under test.
    while Instant::now() < idle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(auth.session(&s.id, None, false), Err(Denied::Ended));
}

#[tokio::test]
async fn twenty_wrong_passwords_lock_the_user_and_the_right_one_is_refused_with_a_retry_time() {
    let (dir, auth) = auth(Settings::default());
    let c = conn(&dir);
    admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by(&auth)).unwrap();
    for i in 0..19 {
        let e = auth.login("root", "wrong password", &format!("10.0.0.{i}")).await.unwrap_err();
        assert!(matches!(e, LoginError::Wrong), "{i}: {e:?}");
    }
    let e = auth.login("root", "wrong password", "10.0.0.99").await.unwrap_err();
    assert!(matches!(e, LoginError::Locked(d) if d == Duration::from_secs(900)), "{e:?}");
    let e = auth.login("root", "long enough pw", "10.0.1.1").await.unwrap_err();
    assert!(matches!(e, LoginError::Locked(d) if d > Duration::from_secs(890)), "{e:?}");
    assert!(e.to_string().starts_with("too many failed logins; retry in "), "{e}");
}

#[tokio::test]
async fn wrong_passwords_from_one_address_lock_the_address() {
    let settings = Settings { source_failures: 5, ..Settings::default() };
    let (dir, auth) = auth(settings);
    let c = conn(&dir);
    admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by(&auth)).unwrap();
    for i in 0..4 {
        let e = auth.login(&format!("nobody{i}"), "x", "10.9.9.9").await.unwrap_err();
        assert!(matches!(e, LoginError::Wrong), "{e:?}");
    }
    assert!(matches!(auth.login("nobody", "x", "10.9.9.9").await, Err(LoginError::Locked(_))));
    assert!(matches!(auth.login("root", "long enough pw", "10.9.9.9").await, Err(LoginError::Locked(_))));
    assert!(auth.login("root", "long enough pw", "10.9.9.8").await.is_ok(), "other addresses still log in");
}

#[tokio::test]
async fn a_disabled_user_cannot_log_in() {
    let (dir, auth) = auth(Settings::default());
    let c = conn(&dir);
    admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by(&auth)).unwrap();
    admin::add_user(&c, "li", Role::Officer, &grids(&["g1"]), "long enough pw", &known(), by(&auth)).unwrap();
    admin::disable_user(&c, "li", by(&auth)).unwrap();
    assert!(matches!(auth.login("li", "long enough pw", "10.0.0.1").await, Err(LoginError::Wrong)));
    admin::set_password(&c, "li", "another long pw", by(&auth)).unwrap();
    let s = auth.login("li", "another long pw", "10.0.0.1").await.unwrap();
    assert_eq!(s.identity.grids, grids(&["g1"]));
}

#[tokio::test]
async fn logins_and_changes_are_recorded_in_the_audit_log() {
    let (dir, auth) = auth(Settings::default());
    let c = conn(&dir);
    let log = &auth.inner.audit;
    let by_ops = admin::By { actor: "cli:ops", audit: log };
    admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by_ops).unwrap();
    assert!(admin::add_user(&c, "root", Role::Admin, &None, "long enough pw", &known(), by_ops).is_err());
    assert!(auth.login("root", "wrong password", "10.0.0.7").await.is_err());
    auth.login("root", "long enough pw", "10.0.0.7").await.unwrap();
    let mut committed = log.committed();
    tokio::time::timeout(Duration::from_secs(10), committed.wait_for(|seq| *seq >= 4)).await.unwrap().unwrap();
    let records = crate::audit::AuditReader::open(log.path()).unwrap().after(0, 10).unwrap();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.actor.as_str(), r.source.as_str(), r.action.as_str(), r.target.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("cli:ops", "cli", "user.add", "user:root", "ok"),
            ("cli:ops", "cli", "user.add", "user:root", "refused"),
            ("root", "10.0.0.7", "auth.login", "user:root", "refused"),
            ("root", "10.0.0.7", "auth.login", "user:root", "ok"),
        ]
    );
    assert_eq!(records[1].detail, "role admin: user \"root\" already exists");
    assert_eq!(records[2].detail, "wrong password");
    assert!(records.iter().all(|r| !r.detail.contains("long enough pw")), "no password in a record");
}

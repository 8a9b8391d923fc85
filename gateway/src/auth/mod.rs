//! Who may see and do what: users with roles and grid scopes, argon2id password hashes, API tokens
//! (random, shown once, stored as SHA-256, compared in constant time), browser sessions with CSRF
//! tokens and idle/absolute timeouts, and login throttling per user and per source address. The state
//! lives in `auth.db` (SQLite) beside the incident database; sessions live in memory only, so a
//! restart logs everybody out.
//!
//! This room knows credentials, not HTTP: `api/` reads headers and cookies and hands their values here.
//! Every login, and every user and token change, is recorded in the audit trail ([`AuditLog`]): the
//! service holds the daemon's log, and the [`admin`] changes take the log the command line opened on
//! the same file. Passwords and token secrets never reach a log line, a record or an answer.
//!
//! Owns: users, roles, grid scopes, tokens, sessions, login throttling, `auth.db`.
//! May import: `model`, `audit`.

pub mod store;
pub mod throttle;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use self::throttle::Throttle;
use crate::audit::{AuditEvent, AuditLog};

/// How long a token or session is trusted from memory before its row is read again: revoking a
/// token or disabling a user on the command line takes effect within this time.
const RECHECK: Duration = Duration::from_secs(5);

/// Sessions kept at most; beyond this the least recently used ends.
const SESSIONS_MAX: usize = 10_000;

/// Shortest password accepted.
pub const PASSWORD_MIN_CHARS: usize = 10;

/// The grids a principal is limited to; `None` is the whole site.
pub type Grids = Option<Vec<String>>;

/// What someone may do, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads, site-wide or in their grids.
    Viewer,
    /// Acknowledges, comments on and closes incidents of their grids; shelves non-critical ones.
    Officer,
    /// An officer who may also shelve critical alarms, in their grids.
    Supervisor,
    /// Everything an operator does, site-wide.
    SafetyManager,
    /// Everything, including rule reloads.
    Admin,
}

impl Role {
    /// Every role, least first.
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Officer, Role::Supervisor, Role::SafetyManager, Role::Admin];

    /// The role named `s` (`admin`, `safety_manager`, `supervisor`, `officer`, `viewer`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Officer => "officer",
            Self::Supervisor => "supervisor",
            Self::SafetyManager => "safety_manager",
            Self::Admin => "admin",
        }
    }

    /// Checks that `grids` suit the role: site-wide roles have none, grid roles at least one.
    ///
    /// # Errors
    /// [`AuthError::Scope`] naming what was expected.
    pub fn check_grids(self, grids: &Grids, known: &[String]) -> Result<(), AuthError> {
        match (self, grids) {
            (Self::Admin | Self::SafetyManager, Some(_)) => {
                Err(AuthError::Scope(format!("role {} is site-wide; expected no grids", self.as_str())))
            }
            (Self::Supervisor | Self::Officer, None) => {
                Err(AuthError::Scope(format!("role {} needs at least one grid", self.as_str())))
            }
            (_, Some(g)) if g.is_empty() => Err(AuthError::Scope("expected at least one grid".into())),
            (_, Some(g)) => match g.iter().find(|g| !known.contains(g)) {
                Some(bad) => Err(AuthError::Scope(format!(
                    "grid {bad:?} is not defined (known grids: {})",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ))),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something in authentication or user management failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("auth database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("token {0:?} does not exist")]
    UnknownToken(String),
    #[error("{0}")]
    Scope(String),
    #[error("user name {0:?} is not allowed; expected 1 to 64 letters, digits, '.', '_', '-' or '@'")]
    BadName(String),
    #[error("password too short; expected at least {PASSWORD_MIN_CHARS} characters")]
    WeakPassword,
    #[error("password must differ from the user name")]
    PasswordIsName,
    #[error("the first user must be an admin")]
    FirstNotAdmin,
    #[error("the system random source failed")]
    Random,
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Someone the gateway knows: from a token or a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's name, or `token:<name>` for a token.
    pub name: String,
    pub role: Role,
    pub grids: Grids,
}

impl Identity {
    /// Whether the identity may see `grid`.
    pub fn sees(&self, grid: &str) -> bool {
        self.grids.as_ref().is_none_or(|g| g.iter().any(|x| x == grid))
    }
}

/// Why a credential was not accepted (for the log; the client only learns 401 or 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("malformed or unknown credential")]
    Unknown,
    #[error("credential revoked, expired or its user disabled")]
    Ended,
    #[error("missing or wrong CSRF token")]
    Csrf,
    #[error("the auth database failed")]
    Unavailable,
}

/// Why a login failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Wrong,
    #[error("too many failed logins; retry in {} s", .0.as_secs().max(1))]
    Locked(Duration),
    #[error("the auth database failed")]
    Unavailable,
}

/// A session just opened: the cookie's value and the CSRF token, both shown to the client once.
#[derive(Debug)]
pub struct NewSession {
    pub id: String,
    pub csrf: String,
    pub identity: Identity,
}

/// Limits of sessions and logins.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after login, used or not.
    pub session_max: Duration,
    /// Wrong passwords for one user within `failure_window` that lock the user.
    pub user_failures: usize,
    /// Wrong passwords from one source address within `failure_window` that lock the address.
    pub source_failures: usize,
    pub failure_window: Duration,
    /// How long a lock lasts.
    pub lockout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            user_failures: 20,
            source_failures: 100,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_secs(15 * 60),
        }
    }
}

struct CachedToken {
    token: store::Token,
    checked: Instant,
}

struct Session {
    identity: Identity,
    csrf_hash: [u8; 32],
    created: Instant,
    created_ns: i64,
    last: Instant,
    checked: Instant,
}

struct Inner {
    db: Mutex<Connection>,
    settings: Settings,
    tokens: Mutex<HashMap<String, CachedToken>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    users: Mutex<Throttle>,
    sources: Mutex<Throttle>,
    audit: AuditLog,
}

/// The authentication service the API asks; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// A mutex whose holder panicked still guards consistent data here (every update is one statement).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SHA-256 of `s`.
pub fn sha256(s: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `n` random bytes as lowercase hex.
///
/// # Errors
/// [`AuthError::Random`].
pub fn random_hex(n: usize) -> Result<String, AuthError> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut buf).map_err(|_| AuthError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The argon2id hash of `password` as a PHC string, with a fresh random salt.
///
/// # Errors
/// [`AuthError::Random`] or [`AuthError::Hash`].
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    use ring::rand::SecureRandom as _;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).map_err(|_| AuthError::Random)?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the user does not exist, so that an unknown name costs as much
/// time as a wrong password.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        random_hex(16).ok().and_then(|p| hash_password(&p).ok()).unwrap_or_else(|| {
            "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$4TGQYQqVKBQyqIvGvOSvCw6rjLaFMPqgSRdkdMWwBhw".into()
        })
    })
}

/// Checks a user name: short, printable, no separators that would confuse logs.
///
/// # Errors
/// [`AuthError::BadName`].
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        && !name.starts_with("token:");
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.to_owned()))
    }
}

/// Checks a new password.
///
/// # Errors
/// [`AuthError::WeakPassword`] or [`AuthError::PasswordIsName`].
pub fn check_password(name: &str, password: &str) -> Result<(), AuthError> {
    if password.chars().count() < PASSWORD_MIN_CHARS {
        return Err(AuthError::WeakPassword);
    }
    if password.eq_ignore_ascii_case(name) {
        return Err(AuthError::PasswordIsName);
    }
    Ok(())
}

/// A new token: the string to show once, and its row (holding only the hash).
///
/// # Errors
/// [`AuthError::Random`].
pub fn new_token(
    name: &str,
    role: Role,
    grids: Grids,
    expires_at: Option<i64>,
    created_by: &str,
    now: i64,
) -> Result<(String, store::Token), AuthError> {
    let id = random_hex(8)?;
    let secret = random_hex(32)?;
    let text = format!("pwt_{id}_{secret}");
    let token = store::Token {
        id,
        name: name.to_owned(),
        role,
        grids,
        created_at: now,
        created_by: created_by.to_owned(),
        expires_at,
        revoked_at: None,
        last_used_at: None,
        hash: sha256(text.as_bytes()).to_vec(),
    };
    Ok((text, token))
}

/// The public id inside a token string, if it has our shape.
fn token_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("pwt_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Where `auth.db` lives: beside the incident database.
pub fn db_path(incidents: &Path) -> PathBuf {
    incidents.parent().unwrap_or(Path::new(".")).join("auth.db")
}

impl Auth {
    /// Opens `auth.db` at `path`; logins are recorded in `audit`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(path: &Path, settings: Settings, audit: AuditLog) -> Result<Self, AuthError> {
        let conn = store::open(path)?;
        let users = Throttle::new(settings.user_failures, settings.failure_window, settings.lockout);
        let sources = Throttle::new(settings.source_failures, settings.failure_window, settings.lockout);
        Ok(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(conn),
                settings,
                tokens: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                users: Mutex::new(users),
                sources: Mutex::new(sources),
                audit,
            }),
        })
    }

    /// The identity of a bearer token, checked against its stored hash in constant time.
    ///
    /// # Errors
    /// [`Denied`] when the token is unknown, wrong, revoked or expired.
    pub fn bearer(&self, text: &str, now_ns: i64) -> Result<Identity, Denied> {
        let id = token_id(text).ok_or(Denied::Unknown)?;
        let presented = sha256(text.as_bytes());
        let now = Instant::now();
        let mut cache = lock(&self.inner.tokens);
        let fresh = cache.get(id).is_some_and(|c| now.duration_since(c.checked) < RECHECK);
        if !fresh {
            // Read again: a revocation on the command line shows here, and the use is recorded.
            let db = lock(&self.inner.db);
            let stored = store::token(&db, id).map_err(|_| Denied::Unavailable)?;
            match stored {
                Some(token) => {
                    if bool::from(presented.ct_eq(token.hash.as_slice())) && token.revoked_at.is_none() {
                        if let Err(e) = store::touch_token(&db, id, now_ns) {
                            tracing::warn!(error = %e, "Cannot record a token's last use.");
                        }
                    }
                    if cache.len() >= SESSIONS_MAX {
                        cache.retain(|_, c| now.duration_since(c.checked) < RECHECK);
                    }
                    cache.insert(id.to_owned(), CachedToken { token, checked: now });
                }
                None => {
                    cache.remove(id);
                    return Err(Denied::Unknown);
                }
            }
        }
        let Some(c) = cache.get(id) else { return Err(Denied::Unknown) };
        let t = &c.token;
        if !bool::from(presented.ct_eq(t.hash.as_slice())) {
            return Err(Denied::Unknown);
        }
        if t.revoked_at.is_some() || t.expires_at.is_some_and(|e| e <= now_ns) {
            return Err(Denied::Ended);
        }
        Ok(Identity { name: format!("token:{}", t.name), role: t.role, grids: t.grids.clone() })
    }

    /// The identity of a session cookie. A state-changing request must bring the session's CSRF
    /// token (`needs_csrf`).
    ///
    /// # Errors
    /// [`Denied`] when the session is unknown or over, or the CSRF token is missing or wrong.
    pub fn session(&self, id: &str, csrf: Option<&str>, needs_csrf: bool) -> Result<Identity, Denied> {
        let key = sha256(id.as_bytes());
        let now = Instant::now();
        let s = &self.inner.settings;
        let mut sessions = lock(&self.inner.sessions);
        let Some(session) = sessions.get_mut(&key) else { return Err(Denied::Unknown) };
        if now.duration_since(session.last) >= s.session_idle || now.duration_since(session.created) >= s.session_max {
            sessions.remove(&key);
            return Err(Denied::Ended);
        }
        if now.duration_since(session.checked) >= RECHECK {
            let user = store::user(&lock(&self.inner.db), &session.identity.name).map_err(|_| Denied::Unavailable)?;
            match user {
                Some(u) if !u.disabled && u.password_changed_at <= session.created_ns => {
                    session.identity.role = u.role;
                    session.identity.grids = u.grids;
                    session.checked = now;
                }
                _ => {
                    sessions.remove(&key);
                    return Err(Denied::Ended);
                }
            }
        }
        if needs_csrf {
            let ok = csrf.is_some_and(|c| bool::from(sha256(c.as_bytes()).ct_eq(&session.csrf_hash)));
            if !ok {
                return Err(Denied::Csrf);
            }
        }
        session.last = now;
        Ok(session.identity.clone())
    }

    /// Checks `password` for `user` from `source` (an address), opening a session when it is right.
    /// Throttled per user and per source; during a lock even the right password is refused.
    ///
    /// # Errors
    /// [`LoginError`].
    pub async fn login(&self, user: &str, password: &str, source: &str) -> Result<NewSession, LoginError> {
        let now = Instant::now();
        let locked = {
            let users = lock(&self.inner.users);
            let sources = lock(&self.inner.sources);
            users.check(user, now).err().or_else(|| sources.check(source, now).err())
        };
        if let Some(wait) = locked {
            self.audit_login(user, source, "refused", format!("locked; retry in {} s", wait.as_secs().max(1)));
            return Err(LoginError::Locked(wait));
        }
        let stored = store::user(&lock(&self.inner.db), user).map_err(|_| LoginError::Unavailable)?;
        let hash = stored.as_ref().map_or_else(|| dummy_hash().to_owned(), |u| u.hash.clone());
        let pw = password.to_owned();
        let right = tokio::task::spawn_blocking(move || verify_password(&pw, &hash)).await.unwrap_or(false);
        let now = Instant::now();
        match stored {
            Some(u) if right && !u.disabled => {
                lock(&self.inner.users).succeed(user, now);
                let session = self.open_session(Identity { name: u.name, role: u.role, grids: u.grids })?;
                self.audit_login(user, source, "ok", format!("role {}", session.identity.role));
                Ok(session)
            }
            stored => {
                // Unknown names count against the source only, so a spray of names cannot grow the map
                // of users and cannot lock out people who do not exist.
                let user_lock = if stored.is_some() { lock(&self.inner.users).fail(user, now) } else { None };
                let source_lock = lock(&self.inner.sources).fail(source, now);
                let why = match &stored {
                    Some(u) if u.disabled => "user disabled",
                    Some(_) => "wrong password",
                    None => "unknown user",
                };
                match user_lock.or(source_lock) {
                    Some(wait) => {
                        self.audit_login(user, source, "refused", format!("{why}; locked for {} s", wait.as_secs()));
                        tracing::warn!(user, source, seconds = wait.as_secs(), "Login locked after repeated failures.");
                        Err(LoginError::Locked(wait))
                    }
                    None => {
                        self.audit_login(user, source, "refused", why.to_owned());
                        Err(LoginError::Wrong)
                    }
                }
            }
        }
    }

    fn audit_login(&self, user: &str, source: &str, outcome: &'static str, detail: String) {
        self.inner.audit.record(AuditEvent {
            actor: user.to_owned(),
            source: source.to_owned(),
            action: "auth.login",
            target: format!("user:{user}"),
            outcome,
            detail,
        });
    }

    fn open_session(&self, identity: Identity) -> Result<NewSession, LoginError> {
        let id = random_hex(32).map_err(|_| LoginError::Unavailable)?;
        let csrf = random_hex(32).map_err(|_| LoginError::Unavailable)?;
        let now = Instant::now();
        let s = &self.inner.settings;
        let mut sessions = lock(&self.inner.sessions);
        if sessions.len() >= SESSIONS_MAX {
            sessions.retain(|_, v| {
                now.duration_since(v.last) < s.session_idle && now.duration_since(v.created) < s.session_max
            });
            if sessions.len() >= SESSIONS_MAX {
                if let Some(oldest) = sessions.iter().min_by_key(|(_, v)| v.last).map(|(k, _)| *k) {
                    sessions.remove(&oldest);
                }
            }
        }
        sessions.insert(
            sha256(id.as_bytes()),
            Session {
                identity: identity.clone(),
                csrf_hash: sha256(csrf.as_bytes()),
                created: now,
                created_ns: crate::model::time::now_ns(),
                last: now,
                checked: now,
            },
        );
        Ok(NewSession { id, csrf, identity })
    }

    /// Ends the session `id` (logout); true when there was one.
    pub fn logout(&self, id: &str) -> bool {
        lock(&self.inner.sessions).remove(&sha256(id.as_bytes())).is_some()
    }

    /// The session limits.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
}

/// User and token management for the command line: each change is checked, stored and recorded in
/// the audit log it is given (source `cli`).
pub mod admin {
    use super::*;

    /// Who makes a change, and the audit log it is recorded in.
    #[derive(Debug, Clone, Copy)]
    pub struct By<'a> {
        /// `cli:<os user>`, `demo`, …
        pub actor: &'a str,
        pub audit: &'a AuditLog,
    }

    /// Records a change and passes its result on: `ok`, `refused` (the change was not acceptable) or
    /// `failed` (the database or the system could not do it).
    fn recorded<T>(
        by: By<'_>,
        action: &'static str,
        target: String,
        detail: String,
        r: Result<T, AuthError>,
    ) -> Result<T, AuthError> {
        let (outcome, detail) = match &r {
            Ok(_) => ("ok", detail),
            Err(
                e @ (AuthError::Open { .. }
                | AuthError::Sql(_)
                | AuthError::Io { .. }
                | AuthError::Random
                | AuthError::Hash(_)),
            ) => ("failed", format!("{detail}: {e}")),
            Err(e) if detail.is_empty() => ("refused", e.to_string()),
            Err(e) => ("refused", format!("{detail}: {e}")),
        };
        by.audit.record(AuditEvent {
            actor: by.actor.to_owned(),
            source: "cli".into(),
            action,
            target,
            outcome,
            detail,
        });
        r
    }

    /// Adds a user; the first user of a database must be an admin.
    ///
    /// # Errors
    /// A bad name, scope or password, an existing user, or a database error.
    pub fn add_user(
        conn: &Connection,
        name: &str,
        role: Role,
        grids: &Grids,
        password: &str,
        known_grids: &[String],
        by: By<'_>,
    ) -> Result<(), AuthError> {
        let r = (|| {
            check_name(name)?;
            role.check_grids(grids, known_grids)?;
            check_password(name, password)?;
            if role != Role::Admin && !store::has_admin(conn)? {
                return Err(AuthError::FirstNotAdmin);
            }
            let hash = hash_password(password)?;
            store::add_user(conn, name, role, grids, &hash, crate::model::time::now_ns())
        })();
        let detail =
            format!("role {role}{}", grids.as_ref().map(|g| format!(", grids {}", g.join(","))).unwrap_or_default());
        recorded(by, "user.add", format!("user:{name}"), detail, r)
    }

    /// Sets a user's password (ending their sessions).
    ///
    /// # Errors
    /// A weak password, an unknown user, or a database error.
    pub fn set_password(conn: &Connection, name: &str, password: &str, by: By<'_>) -> Result<(), AuthError> {
        let r = (|| {
            check_password(name, password)?;
            let hash = hash_password(password)?;
            store::set_password(conn, name, &hash, crate::model::time::now_ns())
        })();
        recorded(by, "user.passwd", format!("user:{name}"), String::new(), r)
    }

    /// Disables a user (ending their sessions).
    ///
    /// # Errors
    /// An unknown user, or a database error.
    pub fn disable_user(conn: &Connection, name: &str, by: By<'_>) -> Result<(), AuthError> {
        let r = store::disable_user(conn, name, crate::model::time::now_ns());
        recorded(by, "user.disable", format!("user:{name}"), String::new(), r)
    }

    /// Creates a token and returns the text to show once.
    ///
    /// # Errors
    /// A bad scope, or a database error.
    pub fn create_token(
        conn: &Connection,
        name: &str,
        role: Role,
        grids: Grids,
        expires_at: Option<i64>,
        known_grids: &[String],
        by: By<'_>,
    ) -> Result<(String, store::Token), AuthError> {
        let detail = format!("name {name}, role {role}");
        let r = (|| {
            check_name(name)?;
            role.check_grids(&grids, known_grids)?;
            let (text, token) = new_token(name, role, grids, expires_at, by.actor, crate::model::time::now_ns())?;
            store::add_token(conn, &token)?;
            Ok((text, token))
        })();
        let target = r.as_ref().map(|(_, t)| format!("token:{}", t.id)).unwrap_or_else(|_| format!("token:{name}"));
        recorded(by, "token.create", target, detail, r)
    }

    /// Revokes a token by its id.
    ///
    /// # Errors
    /// An unknown token, or a database error.
    pub fn revoke_token(conn: &Connection, id: &str, by: By<'_>) -> Result<(), AuthError> {
        let r = store::revoke_token(conn, id, crate::model::time::now_ns());
        recorded(by, "token.revoke", format!("token:{id}"), String::new(), r)
    }
}

#[cfg(test)]
mod tests;

//! `auth.db`: users with their argon2id password hashes, and API tokens with the SHA-256 of their
//! secret. Plain SQLite calls on one connection; the callers decide on which thread they run.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{AuthError, Grids, Role};

/// A user as stored (the password hash stays inside this module's callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub grids: Grids,
    pub disabled: bool,
    /// UTC ns of the last password change; sessions older than it end.
    pub password_changed_at: i64,
    pub(crate) hash: String,
}

/// An API token as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The public part of the token (`pwt_<id>_…`), used to name it in lists and to revoke it.
    pub id: String,
    pub name: String,
    pub role: Role,
    pub grids: Grids,
    pub created_at: i64,
    pub created_by: String,
    /// UTC ns; `None` never expires.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub(crate) hash: Vec<u8>,
}

/// Opens (and creates) the auth database.
///
/// # Errors
/// The file cannot be opened or its schema created.
pub fn open(path: &Path) -> Result<Connection, AuthError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::Io { path: dir.to_owned(), source: e })?;
    }
    let conn = Connection::open(path).map_err(|source| AuthError::Open { path: path.to_owned(), source })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         CREATE TABLE IF NOT EXISTS users(
            name TEXT PRIMARY KEY, role TEXT NOT NULL, grids TEXT, hash TEXT NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, password_changed_at INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS tokens(
            id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, grids TEXT, hash BLOB NOT NULL,
            created_at INTEGER NOT NULL, created_by TEXT NOT NULL, expires_at INTEGER, revoked_at INTEGER,
            last_used_at INTEGER);",
    )?;
    restrict(path);
    Ok(conn)
}

/// Password hashes and token hashes are for the gateway's user only.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn grids_text(g: &Grids) -> Option<String> {
    g.as_ref().map(|v| v.join(","))
}

fn grids_of(t: Option<String>) -> Grids {
    t.map(|s| s.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect())
}

fn role_of(s: &str) -> rusqlite::Result<Role> {
    Role::parse(s)
        .ok_or_else(|| rusqlite::Error::InvalidColumnType(0, format!("role {s:?}"), rusqlite::types::Type::Text))
}

/// Whether there is any enabled admin (the first one is made on the command line).
///
/// # Errors
/// A database error.
pub fn has_admin(conn: &Connection) -> Result<bool, AuthError> {
    let n: i64 =
        conn.query_row("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0", [], |r| r.get(0))?;
    Ok(n > 0)
}

/// Adds a user with an argon2id `hash`.
///
/// # Errors
/// [`AuthError::UserExists`], or a database error.
pub fn add_user(
    conn: &Connection,
    name: &str,
    role: Role,
    grids: &Grids,
    hash: &str,
    now: i64,
) -> Result<(), AuthError> {
    let done = conn.execute(
        "INSERT OR IGNORE INTO users(name, role, grids, hash, created_at, password_changed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![name, role.as_str(), grids_text(grids), hash, now],
    )?;
    if done == 0 {
        return Err(AuthError::UserExists(name.to_owned()));
    }
    Ok(())
}

/// Replaces a user's password hash (and enables the user again).
///
/// # Errors
/// [`AuthError::UnknownUser`], or a database error.
pub fn set_password(conn: &Connection, name: &str, hash: &str, now: i64) -> Result<(), AuthError> {
    let done = conn.execute(
        "UPDATE users SET hash = ?2, password_changed_at = ?3, disabled = 0 WHERE name = ?1",
        params![name, hash, now],
    )?;
    if done == 0 {
        return Err(AuthError::UnknownUser(name.to_owned()));
    }
    Ok(())
}

/// Disables a user: no more logins, and their sessions end.
///
/// # Errors
/// [`AuthError::UnknownUser`], or a database error.
pub fn disable_user(conn: &Connection, name: &str, now: i64) -> Result<(), AuthError> {
    let done =
        conn.execute("UPDATE users SET disabled = 1, password_changed_at = ?2 WHERE name = ?1", params![name, now])?;
    if done == 0 {
        return Err(AuthError::UnknownUser(name.to_owned()));
    }
    Ok(())
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        role: role_of(&r.get::<_, String>(1)?)?,
        grids: grids_of(r.get(2)?),
        hash: r.get(3)?,
        disabled: r.get::<_, i64>(4)? != 0,
        password_changed_at: r.get(5)?,
    })
}

/// One user by name.
///
/// # Errors
/// A database error.
pub fn user(conn: &Connection, name: &str) -> Result<Option<User>, AuthError> {
    Ok(conn
        .query_row(
            "SELECT name, role, grids, hash, disabled, password_changed_at FROM users WHERE name = ?1",
            [name],
            user_row,
        )
        .optional()?)
}

/// Every user, by name.
///
/// # Errors
/// A database error.
pub fn users(conn: &Connection) -> Result<Vec<User>, AuthError> {
    let mut stmt =
        conn.prepare("SELECT name, role, grids, hash, disabled, password_changed_at FROM users ORDER BY name")?;
    let rows = stmt.query_map([], user_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Stores a new token (its hash only).
///
/// # Errors
/// A database error.
pub fn add_token(conn: &Connection, t: &Token) -> Result<(), AuthError> {
    conn.execute(
        "INSERT INTO tokens(id, name, role, grids, hash, created_at, created_by, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![t.id, t.name, t.role.as_str(), grids_text(&t.grids), t.hash, t.created_at, t.created_by, t.expires_at],
    )?;
    Ok(())
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Token> {
    Ok(Token {
        id: r.get(0)?,
        name: r.get(1)?,
        role: role_of(&r.get::<_, String>(2)?)?,
        grids: grids_of(r.get(3)?),
        hash: r.get(4)?,
        created_at: r.get(5)?,
        created_by: r.get(6)?,
        expires_at: r.get(7)?,
        revoked_at: r.get(8)?,
        last_used_at: r.get(9)?,
    })
}

const TOKEN_COLUMNS: &str = "id, name, role, grids, hash, created_at, created_by, expires_at, revoked_at, last_used_at";

/// One token by its public id.
///
/// # Errors
/// A database error.
pub fn token(conn: &Connection, id: &str) -> Result<Option<Token>, AuthError> {
    Ok(conn.query_row(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"), [id], token_row).optional()?)
}

/// Every token, oldest first.
///
/// # Errors
/// A database error.
pub fn tokens(conn: &Connection) -> Result<Vec<Token>, AuthError> {
    let mut stmt = conn.prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"))?;
    let rows = stmt.query_map([], token_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Revokes a token; revoking twice keeps the first time.
///
/// # Errors
/// [`AuthError::UnknownToken`], or a database error.
pub fn revoke_token(conn: &Connection, id: &str, now: i64) -> Result<(), AuthError> {
    let done =
        conn.execute("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1", params![id, now])?;
    if done == 0 {
        return Err(AuthError::UnknownToken(id.to_owned()));
    }
    Ok(())
}

/// Records that a token was used.
///
/// # Errors
/// A database error.
pub fn touch_token(conn: &Connection, id: &str, now: i64) -> Result<(), AuthError> {
    conn.execute("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(())
}

//! Who is asking, and whether they may: the gate every route passes (bearer token or session cookie,
//! CSRF token on every state-changing request made with a cookie, the route's role), and the login,
//! logout and `me` routes. Credentials are checked by `auth`; this file only knows where HTTP carries
//! them. The client's address comes from the listener's connect info ([`Peer`]), the same for login
//! throttling, the gate's refusals and the handlers' audit records.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::audit::{outcome, reason};
use super::tls::Peer;
use super::{ApiError, AppState};
use crate::audit::AuditEvent;
use crate::auth::{Denied, Identity, LoginError, Role};
use crate::model::GridId;

/// The session cookie's name.
pub const COOKIE: &str = "parkwatch_session";

/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, without credentials (`/healthz`).
    Open,
    /// Anyone; the route checks a password itself (`/api/v1/login`).
    Login,
    /// A token or session of any role when `api.metrics_auth` is on, else anyone.
    Metrics,
    /// A token or session of this role or above.
    Role(Role),
}

/// The authenticated caller, as handlers see it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub identity: Identity,
    /// The client's address (or `local` without a socket, in tests).
    pub source: String,
}

impl Principal {
    /// The name recorded on what this caller does.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// The grids this caller may see by name; `None` is the whole site.
    pub fn scope(&self) -> Option<Vec<String>> {
        self.identity.grids.clone()
    }

    /// The grids this caller may see as indices; unknown names match nothing.
    pub fn grid_ids(&self, reg: &crate::model::Registry) -> Option<Vec<GridId>> {
        self.identity.grids.as_ref().map(|g| g.iter().filter_map(|n| reg.grid_id(n)).collect())
    }

    /// An act of this caller, for the audit trail.
    pub fn event(&self, action: &'static str, target: String, outcome: &'static str, detail: String) -> AuditEvent {
        AuditEvent { actor: self.identity.name.clone(), source: self.source.clone(), action, target, outcome, detail }
    }
}

/// The gate of one route: its state and its need.
#[derive(Clone)]
pub(super) struct Gate {
    pub state: AppState,
    pub need: Need,
}

/// The client's address (without the port, which changes with every connection), or `local` when
/// the router is driven without a socket.
fn source(req: &Request) -> String {
    req.extensions().get::<ConnectInfo<Peer>>().map_or_else(|| "local".to_owned(), |c| c.0 .0.ip().to_string())
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The caller of a request to `path` that needs `need`: `Ok(None)` for routes open to anyone. Every
/// refusal is recorded in the audit trail with the method and path, except a read that carried no
/// credentials at all (a browser or a scraper not logged in), which would only fill the trail.
///
/// # Errors
/// 401 without valid credentials, 403 for a missing CSRF token or a role too low.
pub(super) fn check(
    st: &AppState,
    need: Need,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    source: String,
) -> Result<Option<Principal>, ApiError> {
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    match authorize(st, need, changes, headers, &source) {
        Ok(p) => Ok(p),
        Err((e, who)) => {
            let r = Err(e);
            let bare = !headers.contains_key(header::AUTHORIZATION) && cookie(headers, COOKIE).is_none();
            if changes || !bare {
                st.audit.record(AuditEvent {
                    actor: who.unwrap_or_else(|| "anonymous".to_owned()),
                    source,
                    action: "api.request",
                    target: format!("{method} {path}"),
                    outcome: outcome(&r),
                    detail: reason(&r),
                });
            }
            r
        }
    }
}

/// [`check`] without the record: the refusal, and who was refused when they are known.
fn authorize(
    st: &AppState,
    need: Need,
    changes: bool,
    headers: &HeaderMap,
    source: &str,
) -> Result<Option<Principal>, (ApiError, Option<String>)> {
    let role = match need {
        Need::Open | Need::Login => return Ok(None),
        Need::Metrics if !st.access.metrics_auth => return Ok(None),
        Need::Metrics => Role::Viewer,
        Need::Role(r) => r,
    };
    let identity = if headers.contains_key(header::AUTHORIZATION) {
        let token = bearer(headers).ok_or(Denied::Unknown);
        token.and_then(|t| st.access.auth.bearer(t, crate::model::time::now_ns()))
    } else if let Some(session) = cookie(headers, COOKIE) {
        let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        st.access.auth.session(session, csrf, changes)
    } else {
        return Err((ApiError::Unauthorized("credentials required: a bearer token or a session".into()), None));
    };
    let identity = identity.map_err(|e| {
        tracing::info!(source = %source, reason = %e, "Request refused.");
        let e = match e {
            Denied::Csrf => ApiError::Forbidden(format!(
                "a request with a session cookie must carry the {CSRF_HEADER} header it got at login"
            )),
            Denied::Unavailable => ApiError::Internal(e.to_string()),
            Denied::Unknown | Denied::Ended => ApiError::Unauthorized("invalid, expired or revoked credentials".into()),
        };
        (e, None)
    })?;
    if identity.role < role {
        let e = ApiError::Forbidden(format!("needs role {role} or above; you are {}", identity.role));
        return Err((e, Some(identity.name)));
    }
    Ok(Some(Principal { identity, source: source.to_owned() }))
}

/// The middleware in front of every route.
pub(super) async fn gate(State(gate): State<Gate>, mut req: Request, next: Next) -> Response {
    let source = source(&req);
    match check(&gate.state, gate.need, req.method(), req.uri().path(), req.headers(), source.clone()) {
        Ok(Some(p)) => {
            req.extensions_mut().insert(p);
        }
        Ok(None) => {
            req.extensions_mut().insert(Source(source));
        }
        Err(e) => return e.into_response(),
    }
    next.run(req).await
}

/// The client's address on open routes (login throttling needs it).
#[derive(Debug, Clone)]
pub(super) struct Source(pub String);

/// Unknown paths: 401 without credentials (nothing is told to strangers), else 404.
pub(super) async fn fallback(State(st): State<AppState>, req: Request) -> Response {
    match check(&st, Need::Role(Role::Viewer), &Method::GET, req.uri().path(), req.headers(), source(&req)) {
        Ok(_) => ApiError::NotFound(format!("no route {}", req.uri().path())).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginBody {
    user: String,
    password: String,
}

/// `POST /api/v1/login`: a session cookie and its CSRF token for a right password.
pub(super) async fn login(
    State(st): State<AppState>,
    Extension(Source(source)): Extension<Source>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body holds a password: a parse error must not echo any of it.
    let b: LoginBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::BadRequest("expected JSON {\"user\": \"…\", \"password\": \"…\"}".into()))?;
    let s = st.access.auth.login(&b.user, &b.password, &source).await.map_err(|e| match e {
        LoginError::Wrong => ApiError::Unauthorized(e.to_string()),
        LoginError::Locked(wait) => ApiError::TooMany { message: e.to_string(), retry_after: wait.as_secs().max(1) },
        LoginError::Unavailable => ApiError::Internal(e.to_string()),
    })?;
    let max_age = st.access.auth.settings().session_max.as_secs();
    let secure = if st.access.cookie_secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}", s.id);
    let mut resp = Json(json!({
        "user": s.identity.name,
        "role": s.identity.role,
        "grids": s.identity.grids,
        "csrf_token": s.csrf,
    }))
    .into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|e| ApiError::Internal(e.to_string()))?;
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

/// `POST /api/v1/logout`: ends the session of the cookie.
pub(super) async fn logout(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ended = cookie(&headers, COOKIE).is_some_and(|id| st.access.auth.logout(id));
    st.audit.record(p.event("auth.logout", format!("user:{}", p.name()), "ok", String::new()));
    let secure = if st.access.cookie_secure { "; Secure" } else { "" };
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}");
    let mut resp = Json(json!({ "logged_out": ended })).into_response();
    let value = HeaderValue::from_str(&clear).map_err(|e| ApiError::Internal(e.to_string()))?;
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

/// `GET /api/v1/me`: who the credentials stand for.
pub(super) async fn me(Extension(p): Extension<Principal>) -> Json<serde_json::Value> {
    Json(json!({ "name": p.identity.name, "role": p.identity.role, "grids": p.identity.grids }))
}

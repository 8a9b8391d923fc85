//! The dashboard: one HTML page, one style sheet and one script, compiled into the binary with
//! `include_bytes!` so the gateway serves them on the park LAN with the uplink down, and nothing is
//! built or fetched at run time (no CDN, no Node.js).
//!
//! Assets are served under `/assets/` by a name that carries a hash of their content, so a browser
//! may keep them for a year (`immutable`) and a new binary is never shadowed by an old cache; the page
//! itself is always revalidated. Bodies are gzipped once, on first use, and sent compressed to
//! clients that accept it. The page holds no data: everything it shows comes from the authenticated
//! API, so the page and its assets are open routes.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One file as served: its public name, type and both encodings.
struct Asset {
    name: String,
    content_type: &'static str,
    plain: Vec<u8>,
    gzip: Vec<u8>,
    /// Hashed names may be cached for good; the page may not.
    immutable: bool,
}

/// The source files: logical name, type, bytes.
const SOURCES: [(&str, &str, &[u8]); 2] = [
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../web/app.js")),
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../web/app.css")),
];

const INDEX: &str = include_str!("../../web/index.html");

/// What the page may load and talk to: only this origin; no inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// `app.js` → `app.3f9a0c1b2d.js`, the hash being of the content.
fn hashed(name: &str, bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hex}.{ext}"),
        None => format!("{name}.{hex}"),
    }
}

fn make(name: String, content_type: &'static str, plain: Vec<u8>, immutable: bool) -> Asset {
    let gzip = gzip(&plain);
    Asset { name, content_type, plain, gzip, immutable }
}

/// The page and its assets, built once.
fn assets() -> &'static [Asset] {
    static ASSETS: OnceLock<Vec<Asset>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let mut index = INDEX.to_owned();
        let mut list = Vec::new();
        for (name, content_type, bytes) in SOURCES {
            let public = hashed(name, bytes);
            index = index.replace(&format!("/assets/{name}"), &format!("/assets/{public}"));
            list.push(make(public, content_type, bytes.to_vec(), true));
        }
        list.push(make(String::new(), "text/html; charset=utf-8", index.into_bytes(), false));
        list
    })
}

/// Public names of the assets the page loads, for tests.
pub fn asset_names() -> Vec<String> {
    assets().iter().filter(|a| a.immutable).map(|a| a.name.clone()).collect()
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |e| {
            let mut parts = e.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0" | "q=0.00"));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        },
    )
}

fn serve(a: &Asset, headers: &HeaderMap) -> Response {
    let gz = accepts_gzip(headers);
    let body = if gz { a.gzip.clone() } else { a.plain.clone() };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if gz {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let cache = if a.immutable { "public, max-age=31536000, immutable" } else { "no-cache" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if !a.immutable {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    resp
}

/// `GET /`: the dashboard page.
pub(super) async fn page(headers: HeaderMap) -> Response {
    match assets().iter().find(|a| !a.immutable) {
        Some(a) => serve(a, &headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /assets/{name}`: a script or style sheet by its hashed name.
pub(super) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match assets().iter().find(|a| a.immutable && a.name == name) {
        Some(a) => serve(a, &headers),
        None => super::ApiError::NotFound(format!("no asset {name:?}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_content_hash_and_the_page_links_them() {
        let names = asset_names();
        assert_eq!(names.len(), 2);
        assert!(names.iter().all(|n| n.len() > "app..js".len() + 9), "{names:?}");
        let page = assets().iter().find(|a| !a.immutable).unwrap();
        let html = String::from_utf8(page.plain.clone()).unwrap();
        for n in names {
            assert!(html.contains(&format!("/assets/{n}")), "{n} not linked");
        }
        assert_ne!(hashed("a.js", b"1"), hashed("a.js", b"2"));
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(accepts_gzip(&h("gzip, deflate, br")));
        assert!(accepts_gzip(&h("br;q=1.0, gzip;q=0.8")));
        assert!(!accepts_gzip(&h("gzip;q=0")));
        assert!(!accepts_gzip(&h("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}

//! The API over HTTPS with a test CA: served only over TLS, tokens and logins over it (the session
//! cookie then `Secure`), the certificate swapped on SIGHUP on the same listening socket (a bad file
//! keeps the old one), and a LAN address without TLS refused.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use parkwatch_e2e::{gateway_bin, http_get, wait_until, Gateway};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};

/// A certificate authority made for one test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Self { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate for localhost and 127.0.0.1, written as PEM to `dir`'s cert.pem and
    /// key.pem; returns its DER.
    fn issue(&self, dir: &Path) -> Vec<u8> {
        let p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        cert.der().to_vec()
    }
}

/// `GET /healthz` over TLS trusting only `ca`: the status line and the certificate the server showed.
fn https(addr: SocketAddr, ca: &CertificateDer<'static>) -> Result<(String, Vec<u8>), String> {
    let (answer, shown) = exchange(addr, ca, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    Ok((answer.lines().next().unwrap_or_default().to_owned(), shown))
}

/// `method path` over TLS trusting only `ca`, with `headers` and `body`: the whole answer.
fn https_request(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    exchange(addr, ca, &request).unwrap_or_else(|e| panic!("{method} {path} over HTTPS: {e}")).0
}

/// Sends `request` over TLS trusting only `ca`: the answer and the certificate the server showed.
fn exchange(addr: SocketAddr, ca: &CertificateDer<'static>, request: &str) -> Result<(String, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    // The server may close without a close_notify once it has answered; what was read counts.
    let read = tls.read_to_end(&mut answer);
    if answer.is_empty() {
        return Err(format!("no answer: {read:?}"));
    }
    let shown = tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    Ok((String::from_utf8_lossy(&answer).into_owned(), shown))
}

fn config(dir: &Path) -> String {
    format!(
        "[site]\nid = \"xh\"\n[api]\nlisten = \"{{api}}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[rules]\nbuiltin = false\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn hup(gw: &Gateway) {
    assert!(Command::new("kill").arg("-HUP").arg(gw.pid().to_string()).status().unwrap().success());
}

#[test]
fn the_api_speaks_only_https_and_takes_a_new_certificate_on_sighup() {
    let certs = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (Ca::new("parkwatch test CA 1"), Ca::new("parkwatch test CA 2"));
    let first = ca1.issue(certs.path());
    let trusted = ca1.der();
    let gw = Gateway::start_with(&config(certs.path()), move |api| {
        https(api, &trusted).is_ok_and(|(status, _)| status.starts_with("HTTP/1.1 200"))
    });

    let (status, shown) = https(gw.api, &ca1.der()).unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(shown, first, "the configured certificate is served");
    assert!(https(gw.api, &ca2.der()).is_err(), "a client trusting another CA refuses the server");

    // Credentials over HTTPS: the harness's admin token, and a login whose session cookie is Secure.
    let bearer = format!("Bearer {}", gw.token);
    let me = https_request(gw.api, &ca1.der(), "GET", "/api/v1/me", &[("Authorization", &bearer)], "");
    assert!(me.starts_with("HTTP/1.1 200") && me.contains(r#""name":"token:e2e""#), "{me}");
    let anonymous = https_request(gw.api, &ca1.der(), "GET", "/api/v1/me", &[], "");
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    gw.add_user("root", "admin", &[], "root-Pa55word-tls");
    let json = [("Content-Type", "application/json")];
    let login = r#"{"user": "root", "password": "root-Pa55word-tls"}"#;
    let answer = https_request(gw.api, &ca1.der(), "POST", "/api/v1/login", &json, login);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cookie = answer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie: {answer}"));
    assert!(cookie.contains("; Secure"), "the cookie of an HTTPS API is Secure: {cookie}");

    // Plain HTTP on the same port: the handshake fails and nothing is served.
    assert!(http_get(gw.api, "/healthz").is_err(), "plain HTTP got an answer");
    let mut plain = TcpStream::connect(gw.api).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "plain HTTP was answered: {}", String::from_utf8_lossy(&answer));

    // A new certificate from another CA, then SIGHUP: new connections see it, on the same socket.
    let second = ca2.issue(certs.path());
    hup(&gw);
    wait_until(Duration::from_secs(10), "the new certificate", || {
        https(gw.api, &ca2.der()).ok().filter(|(status, shown)| status.starts_with("HTTP/1.1 200") && *shown == second)
    });
    assert!(https(gw.api, &ca1.der()).is_err(), "the old certificate is still served");

    // A broken file on reload: the error names it and the current certificate stays.
    std::fs::write(certs.path().join("cert.pem"), "not a certificate\n").unwrap();
    hup(&gw);
    let cert_path = certs.path().join("cert.pem").display().to_string();
    wait_until(Duration::from_secs(10), "the reload error in the log", || {
        let log = gw.log();
        log.lines().find(|l| l.contains("API certificate not reloaded") && l.contains(&cert_path)).map(|_| ())
    });
    let (status, shown) = https(gw.api, &ca2.der()).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(shown, second, "a broken file replaced the served certificate");
}

#[test]
fn a_lan_address_without_tls_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parkwatch.toml");
    std::fs::write(&file, "[site]\nid = \"xh\"\n[api]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
    let out = Command::new(gateway_bin()).arg("check").arg("-c").arg(&file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("api.listen: 0.0.0.0:8080 is not a loopback address"), "{text}");
    assert!(text.contains("api.tls_cert and api.tls_key"), "{text}");
    // Saying so explicitly is accepted.
    std::fs::write(
        &file,
        "[site]\nid = \"xh\"\n[api]\nlisten = \"0.0.0.0:8080\"\ninsecure_lan = true\n[rules]\nbuiltin = false\n",
    )
    .unwrap();
    let out = Command::new(gateway_bin()).arg("check").arg("-c").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

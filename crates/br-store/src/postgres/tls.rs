//! TLS to PostgreSQL, as libpq's `sslmode` says it (over rustls):
//!
//! - `disable`: never;
//! - `prefer` (libpq's default): TLS when the server offers it, the certificate not checked
//!   (as libpq does), else plaintext;
//! - `require`: TLS or no connection; the certificate is checked against `sslrootcert` when one
//!   is given (libpq does the same when a root file exists), else not;
//! - `verify-ca`: TLS, the certificate chain checked against `sslrootcert` (else
//!   `~/.postgresql/root.crt`, else the system's roots), any host name;
//! - `verify-full`: the same, and the certificate must name the host.
//!
//! The driver knows only `disable`, `prefer` and `require`, and no `sslrootcert`: both are taken
//! out of the URL here and carried out by the connector.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// `sslmode` as libpq reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How to connect: with TLS (and how it is checked), or without.
#[derive(Clone)]
pub(super) enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::None => "no TLS",
            Tls::Rustls(_) => "TLS",
        })
    }
}

/// The URL without `sslmode` and `sslrootcert`, and what they said.
pub(super) struct Split {
    pub(super) url: String,
    pub(super) mode: Mode,
    pub(super) root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query. An unknown `sslmode` is an error
/// that names the ones there are.
pub(super) fn split_url(url: &str) -> Result<Split, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(Split {
            url: url.to_string(),
            mode: Mode::Prefer,
            root_cert: None,
        });
    };
    let mut mode = Mode::Prefer;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", value)) => {
                mode = match value {
                    "disable" => Mode::Disable,
                    // libpq's `allow` tries plaintext first; br asks for no less than `prefer`.
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other}: expected disable, allow, prefer, require, \
                             verify-ca or verify-full"
                        ));
                    }
                };
            }
            Some(("sslrootcert", value)) => root_cert = Some(PathBuf::from(percent_decode(value))),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(Split {
        url,
        mode,
        root_cert,
    })
}

/// `%2F` → `/`: a path in a URL's query is percent-encoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The driver's `SslMode` for `mode`.
pub(super) fn driver_mode(mode: Mode) -> SslMode {
    match mode {
        Mode::Disable => SslMode::Disable,
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    }
}

/// The connector for `mode`; `Err` says why it cannot be made (a root file that cannot be read).
pub(super) fn connector(mode: Mode, root_cert: Option<&Path>) -> Result<Tls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let verify = |names: bool| -> Result<Arc<dyn ServerCertVerifier>, String> {
        let roots = roots(root_cert)?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("TLS roots: {e}"))?;
        Ok(if names {
            webpki
        } else {
            Arc::new(AnyName(webpki))
        })
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        Mode::Disable => return Ok(Tls::None),
        Mode::Prefer => Arc::new(Unchecked(provider.clone())),
        Mode::Require if root_cert.is_some() => verify(false)?,
        Mode::Require => Arc::new(Unchecked(provider.clone())),
        Mode::VerifyCa => verify(false)?,
        Mode::VerifyFull => verify(true)?,
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Tls::Rustls(MakeRustlsConnect::new(config)))
}

/// The roots to check a server against: `sslrootcert`, else `~/.postgresql/root.crt` (libpq's
/// default), else the system's.
fn roots(root_cert: Option<&Path>) -> Result<RootCertStore, String> {
    let default = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
        .filter(|p| p.exists());
    let mut store = RootCertStore::empty();
    if let Some(file) = root_cert.map(Path::to_path_buf).or(default) {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&file)
            .map_err(|e| format!("sslrootcert {}: {e}", file.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("sslrootcert {}: {e}", file.display()))?;
        let (added, _) = store.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "sslrootcert {}: no certificate in it",
                file.display()
            ));
        }
        return Ok(store);
    }
    let found = rustls_native_certs::load_native_certs();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        return Err("no root certificates: give sslrootcert".into());
    }
    Ok(store)
}

/// Checks the chain as webpki does, but not the host name (`verify-ca`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Encrypts without checking who the server is (`prefer`, and `require` without a root file):
/// what libpq does in those modes. The handshake's signatures are still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url_and_say_how_to_connect() {
        let s = split_url(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .expect("split");
        assert_eq!(s.url, "postgres://u@h/db?application_name=x");
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        let s = split_url("postgres://u@h/db").expect("split");
        assert_eq!(
            (s.mode, s.url.as_str()),
            (Mode::Prefer, "postgres://u@h/db")
        );
        assert!(split_url("postgres://h/db?sslmode=maybe").is_err());
        assert_eq!(driver_mode(Mode::VerifyCa), SslMode::Require);
    }
}

//! Who may use the server: which `Host` names it answers, and the token that every request must
//! carry when it has one (DESIGN.md, "Serving safely").
//!
//! The checks run before any route, on every request: the page, the API, the stream and the
//! actions alike.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use axum::http::header::{AUTHORIZATION, COOKIE, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Uri};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The cookie that keeps the token for the page (set by `GET /?token=…`).
pub const TOKEN_COOKIE: &str = "br_token";

/// A secret that every request must carry: `Authorization: Bearer <token>` or the cookie.
///
/// It may hold only characters that a header and a cookie carry as they are (ASCII letters,
/// digits and `-._~+/=`, enough for hex, base64 and UUIDs), so that it is compared exactly as
/// it was given. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

/// Why a text cannot be a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error(
        "the token may hold only ASCII letters, digits and `-._~+/=` (it travels in a header and \
         a cookie), not {0:?}"
    )]
    Character(char),
}

impl Token {
    pub fn new(text: impl Into<String>) -> Result<Token, TokenError> {
        let text = text.into();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~+/=".contains(*c)))
        {
            return Err(TokenError::Character(c));
        }
        Ok(Token(text))
    }

    /// Whether `given` is the token, in time that does not depend on where they first differ,
    /// so that timing the answers cannot reveal the token a byte at a time.
    ///
    /// `subtle` rather than a loop of our own: it keeps the comparison from being turned back
    /// into an early exit by the optimiser (a hand-written XOR loop has no such guarantee), and
    /// it is the comparison the RustCrypto and rustls ecosystems rely on. Only the length is
    /// not hidden (a different length is refused at once), which tells nothing about the
    /// token's characters.
    pub fn matches(&self, given: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(given).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// How the server is reached, which decides which hosts it answers and whether a token is
/// needed. A server bound beyond loopback cannot be made without a token.
#[derive(Debug, Clone)]
pub enum Access {
    /// Bound to a loopback address: only `localhost`, `127.x.x.x` and `[::1]` hosts are
    /// answered, so that a web page cannot read the API by pointing a name of its own at
    /// 127.0.0.1 (DNS rebinding). A token, when given, is needed as well.
    Loopback { token: Option<Token> },
    /// Bound to an address others can reach: any well-formed host is answered (people reach it
    /// by names the server cannot know), and every request needs the token. A rebinding page
    /// has neither the token nor the cookie, which the browser keeps for the server's own name.
    Network { token: Token },
}

impl Access {
    fn token(&self) -> Option<&Token> {
        match self {
            Access::Loopback { token } => token.as_ref(),
            Access::Network { token } => Some(token),
        }
    }

    /// Refuses a request whose `Host` this server does not answer: more than one `Host`
    /// header, a target that names another host, a host that is not a host name, or (on
    /// loopback) one that is not a localhost name. A request without `Host` (HTTP/1.0) is
    /// answered: no browser sends one, so it cannot come from a rebinding page.
    pub(crate) fn check_host(&self, parts: &Parts) -> Result<(), ApiError> {
        let mut hosts = parts.headers.get_all(HOST).iter();
        let header = hosts.next();
        if hosts.next().is_some() {
            return Err(ApiError::BadRequest(
                "a request may carry only one Host header".into(),
            ));
        }
        let host = match (header, target_host(&parts.uri)) {
            (Some(header), Some(target))
                if !header.as_bytes().eq_ignore_ascii_case(target.as_bytes()) =>
            {
                return Err(ApiError::BadRequest(format!(
                    "the request's target names host `{target}` but its Host header `{}`",
                    String::from_utf8_lossy(header.as_bytes())
                )));
            }
            (Some(header), _) => String::from_utf8_lossy(header.as_bytes()).into_owned(),
            (None, Some(target)) => target,
            (None, None) => return Ok(()),
        };
        let Some(name) = host_name(&host) else {
            return Err(ApiError::BadRequest(format!(
                "the Host header `{host}` is not a host name"
            )));
        };
        if matches!(self, Access::Loopback { .. }) && !is_loopback_name(name) {
            return Err(ApiError::Forbidden(format!(
                "this server answers only for localhost, not for host `{host}`"
            )));
        }
        Ok(())
    }

    /// Refuses a request that does not carry the token, when there is one: neither
    /// `Authorization: Bearer <token>` nor the cookie.
    pub(crate) fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = self.token() else {
            return Ok(());
        };
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(bearer_credentials);
        let cookies = headers.get_all(COOKIE).iter().flat_map(token_cookies);
        // Every candidate is compared (no short cut), though one match suffices.
        let mut found = false;
        for given in bearer.chain(cookies) {
            found |= token.matches(given);
        }
        if found {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(format!(
                "this server needs its token: send `Authorization: Bearer <token>`, or open \
                 /?token=<token> once in the browser (the token is the one given to `br serve` \
                 with --token or {TOKEN_ENV})"
            )))
        }
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token().is_some()
    }

    /// Whether `given` (the page's `?token=`) is the token.
    pub(crate) fn token_matches(&self, given: &str) -> bool {
        self.token().is_some_and(|t| t.matches(given.as_bytes()))
    }

    /// The cookie that keeps the token for the page: HttpOnly (no script reads it),
    /// SameSite=Strict (no other site's page sends it), for every path. Not `Secure`: the
    /// server speaks plain HTTP, and a Secure cookie would never come back.
    pub(crate) fn token_cookie(&self) -> Option<HeaderValue> {
        let token = self.token()?;
        HeaderValue::from_str(&format!(
            "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            token.0
        ))
        .ok()
    }
}

/// The environment variable `br serve` reads the token from; named in messages.
const TOKEN_ENV: &str = "BR_SERVE_TOKEN";

/// The host (and port) an absolute-form request target names, if it names one.
fn target_host(uri: &Uri) -> Option<String> {
    uri.authority().map(|a| a.as_str().to_string())
}

/// The name in `host[:port]` (an IPv6 address without its brackets), if `host` is one: a
/// registered name or IPv4 address of letters, digits, `-`, `.` and `_`, or a bracketed IPv6
/// address; a port of digits.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !ok {
            return None;
        }
        (name, port)
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return None;
    }
    Some(name)
}

/// `localhost`, `127.x.x.x` or `::1`.
fn is_loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The credentials of `Authorization: Bearer <credentials>` (the scheme in any case).
fn bearer_credentials(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

/// The values of every `br_token` cookie in one `Cookie` header.
fn token_cookies(value: &HeaderValue) -> impl Iterator<Item = &[u8]> {
    value.as_bytes().split(|b| *b == b';').filter_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
        (name == TOKEN_COOKIE.as_bytes()).then(|| &value[1..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for ok in [
            "localhost",
            "localhost:7878",
            "LOCALHOST:1",
            "127.0.0.1",
            "127.0.0.1:7878",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:7878",
        ] {
            assert!(host_name(ok).is_some_and(is_loopback_name), "{ok}");
        }
        for bad in [
            "example.com",
            "evil.localhost.example:7878",
            "10.0.0.1:7878",
            "[::2]:7878",
        ] {
            assert!(!host_name(bad).is_some_and(is_loopback_name), "{bad}");
        }
    }

    #[test]
    fn only_host_names_are_host_names() {
        for ok in [
            "example.com",
            "a-b.c_d:80",
            "10.0.0.1",
            "[2001:db8::1]:7878",
            "x:65535",
        ] {
            assert!(host_name(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "local host",
            "localhost:port",
            "x:65536",
            "[::1",
            "[::1]x",
            "[nope]:1",
            "a/b",
            "user@host",
        ] {
            assert!(host_name(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_found_in_the_bearer_header_and_the_cookie() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(bearer_credentials(&v("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(&v("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(&v("Basic abc")), None);
        assert_eq!(bearer_credentials(&v("Bearer")), None);
        let cookies = v("a=1; br_token=x=y; br_token2=z;br_token=w");
        assert_eq!(
            token_cookies(&cookies).collect::<Vec<_>>(),
            [&b"x=y"[..], &b"w"[..]]
        );
    }
}

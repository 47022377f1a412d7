//! TLS to PostgreSQL, through the real CLI, against a server the test starts with a throwaway
//! certificate for `localhost` (signed by a throwaway CA): each `sslmode` does what libpq's
//! does, and one that asks for TLS never falls back to plaintext.

mod common;

use common::TestRepo;
use common::pg_server::PgServer;

/// `br list` against `url`: its exit code and what it said.
fn list(repo: &TestRepo, url: &str) -> (i32, String) {
    let run = repo.br(&["--store", url, "list"]);
    (run.code, format!("{}{}", run.stdout, run.stderr))
}

#[test]
fn each_sslmode_connects_as_libpq_would_and_checks_what_it_says() {
    let Some((server, ca)) = PgServer::start_with_tls() else {
        return;
    };
    let repo = TestRepo::new();
    let port = server.port();
    let ca = ca.display();
    let at =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");
    for (url, connects) in [
        (
            at(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            true,
        ),
        // The certificate names localhost, not 127.0.0.1: the chain is fine, the name is not.
        (
            at(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            false,
        ),
        (
            at("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            true,
        ),
        (at("localhost", "sslmode=require"), true),
        (at("localhost", "sslmode=prefer"), true),
        // No root to check against: the system's do not know this CA.
        (at("localhost", "sslmode=verify-full"), false),
    ] {
        let (code, said) = list(&repo, &url);
        assert_eq!(code == 0, connects, "{url}: exit {code}\n{said}");
    }
}

#[test]
fn a_url_that_asks_for_tls_never_falls_back_to_plaintext() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let repo = TestRepo::new();
    let port = server.port();
    for mode in ["require", "verify-ca", "verify-full"] {
        let (code, said) = list(
            &repo,
            &format!("postgres://postgres@localhost:{port}/postgres?sslmode={mode}"),
        );
        assert_ne!(
            code, 0,
            "sslmode={mode} reached a server without TLS:\n{said}"
        );
    }
    let (code, said) = list(
        &repo,
        &format!("postgres://postgres@localhost:{port}/postgres?sslmode=prefer"),
    );
    assert_eq!(code, 0, "prefer may go without TLS: {said}");
}

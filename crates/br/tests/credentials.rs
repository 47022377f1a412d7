//! A PostgreSQL store URL without a password, as libpq allows it: the password comes from
//! `PGPASSWORD` or the password file (`~/.pgpass`, mode 0600), so the URL br shows and passes
//! around holds no secret. Against a server of the test's own that requires a password.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestRepo;
use common::pg_server::PgServer;

#[test]
fn a_url_without_a_password_logs_in_with_pgpassword_or_the_password_file() {
    let password = format!("pw{:08x}", fastrand::u32(..));
    let Some(server) = PgServer::start_with_password(&password) else {
        return;
    };
    let url = server.url();
    assert!(!url.contains(&password));
    let repo = TestRepo::with_store(&url);

    // No password anywhere: the server refuses, and the message does not invent one.
    let refused = repo.br(&["list"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(refused.stderr.contains("password"), "{}", refused.stderr);

    // PGPASSWORD.
    let mut with_env = repo.br_command(&["list"]);
    with_env.env("PGPASSWORD", &password);
    let listed = common::Run::from(with_env.output().expect("run br"));
    assert_eq!(listed.code, 0, "{}", listed.stderr);

    // The password file, readable by its owner only; libpq ignores one others can read.
    let pgpass = repo.home().join(".pgpass");
    std::fs::write(
        &pgpass,
        format!("127.0.0.1:{}:postgres:postgres:{password}\n", server.port()),
    )
    .expect("write .pgpass");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open_file = repo.br(&["list"]);
    assert_ne!(
        open_file.code, 0,
        "a world-readable password file is ignored"
    );
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let listed = repo.br(&["list"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    for output in [&refused, &listed, &open_file] {
        assert!(!output.stdout.contains(&password) && !output.stderr.contains(&password));
    }
}

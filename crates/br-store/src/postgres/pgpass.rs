//! Passwords the way libpq finds them when the URL has none: `PGPASSWORD`, else the password
//! file (`PGPASSFILE`, else `~/.pgpass`), so a store URL — which br shows and passes around —
//! need not hold a secret. The driver does neither by itself.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// The password for `config` when it names none: `PGPASSWORD`, else the first matching line of
/// the password file. `None` when neither has one (the server may not want one).
pub(super) fn password_for(config: &Config) -> Option<Vec<u8>> {
    if config.get_password().is_some() {
        return None;
    }
    if let Some(password) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty()) {
        return Some(password.into_encoded_bytes());
    }
    let file = password_file()?;
    // libpq ignores a password file others can read; so does br.
    let mode = std::fs::metadata(&file).ok()?.permissions().mode();
    if mode & 0o077 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    lookup(&text, &Wanted::of(config)).map(String::into_bytes)
}

fn password_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass"))
}

/// What a password file line must match.
#[derive(Debug, PartialEq, Eq)]
struct Wanted {
    host: String,
    port: String,
    database: String,
    user: String,
}

impl Wanted {
    fn of(config: &Config) -> Wanted {
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(name)) => name.clone(),
            // A socket is "localhost" in the password file, as in libpq.
            Some(Host::Unix(_)) | None => "localhost".to_string(),
        };
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let user = config.get_user().unwrap_or_default().to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        Wanted {
            host,
            port,
            database,
            user,
        }
    }
}

/// The password of the first line of `text` (`host:port:database:user:password`, `*` matching
/// anything, `\:` and `\\` escaping) that matches `wanted`.
fn lookup(text: &str, wanted: &Wanted) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(fields)
        .find(|f| {
            let matches = |field: &str, value: &str| field == "*" || field == value;
            matches(&f[0], &wanted.host)
                && matches(&f[1], &wanted.port)
                && matches(&f[2], &wanted.database)
                && matches(&f[3], &wanted.user)
        })
        .map(|mut f| f.swap_remove(4))
}

/// The five fields of a line, escapes resolved; `None` for a line with fewer.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next()?),
            // The password is the rest of the line, colons and all.
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(host: &str, port: &str, database: &str, user: &str) -> Wanted {
        Wanted {
            host: host.into(),
            port: port.into(),
            database: database.into(),
            user: user.into(),
        }
    }

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        let file = "# comment\n\
                    other:5432:*:br:nope\n\
                    db.example:*:br\\:store:br:s3cret:with:colons\n\
                    *:*:*:br:fallback\n";
        assert_eq!(
            lookup(file, &wanted("db.example", "6543", "br:store", "br")).as_deref(),
            Some("s3cret:with:colons")
        );
        assert_eq!(
            lookup(file, &wanted("elsewhere", "5432", "x", "br")).as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup(file, &wanted("elsewhere", "5432", "x", "me")), None);
        assert_eq!(
            lookup("too:few:fields\n", &wanted("a", "1", "b", "c")),
            None
        );
    }

    #[test]
    fn a_url_names_what_to_look_up() {
        let config: Config = "postgres://br@db.example:6543/brstore"
            .parse()
            .expect("url");
        assert_eq!(
            Wanted::of(&config),
            wanted("db.example", "6543", "brstore", "br")
        );
        let config: Config = "postgres://br@db.example".parse().expect("url");
        assert_eq!(
            Wanted::of(&config),
            wanted("db.example", "5432", "br", "br")
        );
    }
}

//! Settings from the environment (`BR_MAX_LOG`, `BR_BUSY_TIMEOUT`), parsed before a command
//! records anything: a bad one is bad input (exit 2) that names the variable and its value —
//! never a session created and then left behind by workers that die parsing it.

use std::ffi::OsString;
use std::time::Duration;

use crate::cli::{MaxLog, parse_size};
use crate::exit::usage;

/// `--max-log` when not given and `BR_MAX_LOG` is not set.
const DEFAULT_MAX_LOG: MaxLog = MaxLog(Some(1 << 30));

/// The output limit of one attempt: `--max-log`, else `BR_MAX_LOG`, else 1 GiB.
pub(crate) fn max_log(flag: Option<MaxLog>) -> anyhow::Result<MaxLog> {
    if let Some(given) = flag {
        return Ok(given);
    }
    match variable("BR_MAX_LOG")? {
        Some(text) => parse_size(&text).map_err(|e| usage(format!("BR_MAX_LOG=`{text}`: {e}"))),
        None => Ok(DEFAULT_MAX_LOG),
    }
}

/// `BR_BUSY_TIMEOUT`: how long a write waits when another process holds the store's lock
/// (`None`: the store's default).
pub(crate) fn busy_timeout() -> anyhow::Result<Option<Duration>> {
    variable("BR_BUSY_TIMEOUT")?
        .map(|text| {
            humantime::parse_duration(text.trim()).map_err(|e| {
                usage(format!(
                    "BR_BUSY_TIMEOUT=`{text}` is not a duration ({e}); write e.g. 500ms, 10s, 1m"
                ))
            })
        })
        .transpose()
}

/// A variable's value; unset and empty are the same (`BR_MAX_LOG= br run` means the default).
fn variable(name: &str) -> anyhow::Result<Option<String>> {
    variable_from(name, std::env::var_os(name))
}

fn variable_from(name: &str, value: Option<OsString>) -> anyhow::Result<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v.into_string().map(Some).map_err(|v| {
            usage(format!(
                "{name}=`{}` is not UTF-8 text",
                v.to_string_lossy()
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStringExt as _;
        let err = variable_from("BR_MAX_LOG", Some(OsString::from_vec(b"1\xffMiB".to_vec())))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "BR_MAX_LOG=`1\u{fffd}MiB` is not UTF-8 text"
        );
        assert_eq!(variable_from("X", Some(OsString::new())).unwrap(), None);
        assert_eq!(variable_from("X", None).unwrap(), None);
    }
}

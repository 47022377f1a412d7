//! `br events` (the event log) and `br logs` (a task's output).

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::Context as _;
use br_core::{Attempt, SessionId, TaskId};
use br_store::view::EventView;
use br_store::{Event, EventFilter, Store};

use crate::cli::{EventsArgs, LogsArgs};
use crate::context::Context;
use crate::escape::esc;
use crate::exit::{Exit, usage};

pub(super) fn events(ctx: &Context, args: EventsArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let session = args
        .session
        .as_deref()
        .map(|s| store.resolve_session(s))
        .transpose()?
        .map(|s| s.id);
    let mut filter = EventFilter {
        session,
        ..Default::default()
    };
    let mut all = store.events(&filter)?;
    if let Some(n) = args.limit {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    let mut out = std::io::stdout().lock();
    let mut last = 0;
    for ev in &all {
        write_event(&mut out, ev, ctx.json)?;
        last = ev.seq;
    }
    out.flush()?;
    if !args.follow {
        return Ok(Exit::Success);
    }
    if last == 0 {
        last = store.last_seq()?;
    }
    loop {
        store.wait_for_change(Duration::from_millis(250))?;
        filter.after_seq = Some(last);
        for ev in store.events(&filter)? {
            write_event(&mut out, &ev, ctx.json)?;
            last = ev.seq;
        }
        out.flush()?;
    }
}

fn write_event(out: &mut impl Write, ev: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, &EventView::from(ev))?;
        writeln!(out)?;
        return Ok(());
    }
    let mut line = format!("{:>6} {} {:<21}", ev.seq, ev.at, ev.kind.as_str());
    if let Some(s) = &ev.session_id {
        line.push_str(&format!(" session={s}"));
    }
    if let Some(t) = &ev.task_id {
        line.push_str(&format!(" task={t}"));
    }
    if let Some(a) = ev.attempt {
        line.push_str(&format!(" attempt={a}"));
    }
    if let Some(w) = &ev.worker_id {
        line.push_str(&format!(" worker={w}"));
    }
    // The whole detail, as stored: this is the log for looking closely; the dashboards and
    // progress lines say it in words.
    let detail = serde_json::to_value(&ev.detail)?;
    if detail.as_object().is_some_and(|d| !d.is_empty()) {
        line.push_str(&format!(" {detail}"));
    }
    // JSON escapes C0 controls but passes DEL and the C1 controls through: escape the line.
    writeln!(out, "{}", esc(line))?;
    Ok(())
}

pub(super) fn logs(ctx: &Context, args: LogsArgs) -> anyhow::Result<Exit> {
    let store = ctx.open_store_to_read()?;
    let (s, task) = super::session_and_task(&*store, &args.names)?;
    let attempts = store.attempts(&s.id, &task)?;
    let Some(latest) = attempts.last() else {
        return Err(usage(format!(
            "task {task} of session {} has not run yet",
            s.id
        )));
    };
    let wanted = args.attempt.unwrap_or(latest.attempt.0);
    let attempt = attempts
        .iter()
        .find(|a| a.attempt.0 == wanted)
        .ok_or_else(|| {
            usage(format!(
                "task {task} has no attempt {wanted} (it has 1 to {})",
                latest.attempt
            ))
        })?;
    // The log is made on the first byte of output: an attempt that wrote none has no log.
    let wrote_nothing = attempt
        .detail
        .get("output_bytes")
        .and_then(serde_json::Value::as_u64)
        == Some(0);
    if wrote_nothing {
        return Ok(Exit::Success);
    }
    let finished = || -> anyhow::Result<bool> {
        Ok(store
            .attempts(&s.id, &task)?
            .iter()
            .any(|a| a.attempt.0 == wanted && a.finished_at.is_some()))
    };
    let mut out = std::io::stdout().lock();
    // The file on the machine that ran the attempt is the freshest copy; everywhere else (and
    // once `br cleanup` removed the file) the store has it, shipped as it was written.
    // A path names a file on the machine that ran the attempt: elsewhere a file of that name
    // is not this log. A worker no longer recorded leaves only the file to go by.
    let ran_here = match store.worker(&attempt.worker_id) {
        Ok(w) => Some(w.host == br_exec::liveness::host_name()),
        Err(_) => None,
    };
    let path = attempt.log_path.clone().filter(|p| match ran_here {
        Some(true) => std::path::Path::new(p).exists() || attempt.finished_at.is_none(),
        Some(false) => false,
        None => std::path::Path::new(p).exists(),
    });
    let mut offset = 0u64;
    loop {
        // Asked before reading: an attempt seen finished had all of its output written (and
        // stored) by then, so this read is the last one needed.
        let ended = finished()?;
        offset += match &path {
            Some(path) => copy_from(path, offset, &mut out)?,
            None => copy_stored(&*store, &s.id, &task, attempt.attempt, offset, &mut out)?,
        };
        out.flush()?;
        if path.is_none() && offset == 0 && ended {
            let place = attempt.log_path.as_deref().map_or(String::new(), |p| {
                format!(" ({p} is not on this machine: it ran elsewhere, or was removed)")
            });
            anyhow::bail!(
                "the store holds no output of attempt {wanted} of {task}{place}; attempts run \
                 by a br older than this one logged only to the machine that ran them"
            );
        }
        if !args.follow || ended {
            return Ok(Exit::Success);
        }
        let _ = store.wait_for_change(Duration::from_millis(200));
    }
}

/// Copies the attempt's stored output from `offset` to as far as the store has it.
fn copy_stored(
    store: &dyn Store,
    session: &SessionId,
    task: &TaskId,
    attempt: Attempt,
    offset: u64,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut copied = 0u64;
    loop {
        let more = store.read_log(session, task, attempt, offset + copied)?;
        if more.is_empty() {
            return Ok(copied);
        }
        out.write_all(&more)?;
        copied += more.len() as u64;
    }
}

/// Copies the file from `offset` to its current end; a missing file is empty.
fn copy_from(path: &str, offset: u64, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {path}"))),
    };
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("cannot read {path}"))?;
    let mut copied = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {path}"))?;
        if n == 0 {
            return Ok(copied);
        }
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
}

//! The slot's record of the attempt checked out in it (`slot-<n>.attempt`): written at checkout,
//! removed once the attempt's result was kept. Found at the next checkout, it means the worker
//! died mid-attempt, and names the ref its leftovers are kept at.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use br_core::TaskId;

use super::attempt::{AttemptSpec, attempt_ref, one_line};
use super::{WorktreeError, io_error};

/// The attempt a slot was checked out for, as recorded in `slot-<n>.attempt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRecord {
    pub(crate) session_id: String,
    pub(crate) session_name: String,
    pub(crate) task_id: String,
    pub(crate) attempt: u32,
    pub(crate) base_commit: String,
}

impl SlotRecord {
    pub(crate) fn of(attempt: &AttemptSpec, base: &str) -> SlotRecord {
        SlotRecord {
            session_id: attempt.session_id.to_string(),
            session_name: attempt.session_name.to_string(),
            task_id: attempt.task_id.to_string(),
            attempt: attempt.attempt,
            base_commit: base.to_string(),
        }
    }

    /// The attempt ref to keep leftovers at. A record that cannot name one (written by something
    /// else, or damaged) still gets a ref, named after the slot and the time.
    pub(crate) fn reference(&self, slot: u32) -> String {
        let valid = TaskId::new(self.session_id.as_str()).is_ok()
            && TaskId::new(self.task_id.as_str()).is_ok();
        if valid {
            attempt_ref(&self.session_id, &self.task_id, self.attempt)
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("refs/br/attempts/unknown/slot-{slot}/{now}")
        }
    }

    pub(crate) fn leftovers_message(&self) -> String {
        let name = one_line(&self.session_name);
        format!(
            "br: leftovers of task {} of session {name}, attempt {}\n\n\
             The worker running this attempt stopped before it finished; this is what the \
             attempt left in its worktree.\n\n\
             Br-Session: {name}\nBr-Session-Id: {}\nBr-Task: {}\nBr-Attempt: {}\n",
            one_line(&self.task_id),
            self.attempt,
            self.session_id,
            one_line(&self.task_id),
            self.attempt
        )
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "session_id": self.session_id,
            "session_name": self.session_name,
            "task_id": self.task_id,
            "attempt": self.attempt,
            "base_commit": self.base_commit,
            "pid": std::process::id(),
        })
        .to_string()
    }

    fn from_json(text: &str) -> SlotRecord {
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let field = |k: &str| value[k].as_str().unwrap_or_default().to_string();
        SlotRecord {
            session_id: field("session_id"),
            session_name: field("session_name"),
            task_id: field("task_id"),
            attempt: value["attempt"]
                .as_u64()
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            base_commit: field("base_commit"),
        }
    }
}

pub(crate) fn read_record(path: &Path) -> Result<Option<SlotRecord>, WorktreeError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(SlotRecord::from_json(&text))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// Written to a temporary name and renamed, so a reader never sees half a record.
pub(crate) fn write_record(path: &Path, record: &SlotRecord) -> Result<(), WorktreeError> {
    let tmp = path.with_extension("attempt.tmp");
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(record.to_json().as_bytes())
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("rename", &tmp))
}

pub(crate) fn remove_file_if_present(path: &Path) -> Result<(), WorktreeError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_records_round_trip_and_damaged_ones_still_name_a_ref() {
        let spec = AttemptSpec {
            session_id: "0123456789ab",
            session_name: "a\nname",
            session_slug: "a-name",
            task_id: "api",
            attempt: 3,
            base_commit: "c0ffee",
            keep: &[],
        };
        let record = SlotRecord::of(&spec, "c0ffee");
        assert_eq!(SlotRecord::from_json(&record.to_json()), record);
        assert_eq!(record.reference(7), "refs/br/attempts/0123456789ab/api/3");
        assert!(
            !record
                .leftovers_message()
                .lines()
                .next()
                .unwrap_or("")
                .is_empty()
        );
        let damaged = SlotRecord::from_json("{not json");
        assert!(
            damaged
                .reference(7)
                .starts_with("refs/br/attempts/unknown/slot-7/")
        );
    }
}

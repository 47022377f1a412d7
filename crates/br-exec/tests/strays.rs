//! The subreaper, in a test binary of its own: becoming a process's subreaper changes where every
//! orphan of every test in the binary goes.

use std::process::Command;
use std::time::{Duration, Instant};

use br_exec::strays::{become_subreaper, children, kill_strays};

#[test]
fn an_orphan_that_left_its_group_is_killed_once_it_re_parents_here() {
    become_subreaper().expect("prctl");
    // `sh` starts a sleep in a session of its own and exits at once: the sleep is orphaned
    // and, with this process its subreaper, becomes our child.
    let mut sh = Command::new("sh")
        .args(["-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut out = String::new();
    std::io::Read::read_to_string(sh.stdout.as_mut().expect("stdout"), &mut out).expect("read");
    sh.wait().expect("reap sh");
    let orphan: i32 = out.trim().parse().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children().contains(&orphan) {
        assert!(Instant::now() < deadline, "the orphan re-parented here");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut keep = children();
    keep.remove(&orphan);
    let killed = kill_strays(&keep);
    assert!(killed.contains(&orphan), "{killed:?}");
    assert!(!children().contains(&orphan), "killed and reaped");
}

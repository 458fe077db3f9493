//! `custody up` watches every service it runs: one that dies is reported by
//! name and up stops, rather than serve on without it (a dead projection
//! answers nothing; a dead authz stops registrations reaching NATS).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use custody::natsd::die_with_parent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_stops_and_names_the_service_that_died() {
    let dir = tempfile::tempdir().unwrap();
    // The projection's store cannot open: a file stands where its folder goes.
    std::fs::write(dir.path().join("projection"), "not a folder").unwrap();
    let mut cmd = Command::new(BIN);
    die_with_parent(&mut cmd);
    let log = dir.path().join("up.log");
    cmd.args(["up", "--no-demo", "--data"])
        .arg(dir.path())
        .env("CUSTODY_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let up = ServiceProcess::new(cmd.spawn().unwrap());
    let (status, _up) = up.exit_within(Duration::from_secs(60)).await;
    let status = status.expect("custody up kept serving without its projection");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("the projection stopped"), "{said}");
}

//! The audit database: records are chained and committed in order, read back by cursor, and a hand
//! edit or deletion in the file is named by `verify_file`.

use std::time::{Duration, Instant};

use super::*;

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        actor: format!("officer-{i}"),
        source: "127.0.0.1:50000".into(),
        action: "incident.ack",
        target: format!("incident:{i}"),
        outcome: "ok",
        detail: "巡检确认".into(),
    }
}

/// Waits until the log has committed `seq`.
fn wait_committed(log: &AuditLog, seq: i64) {
    let rx = log.committed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while *rx.borrow() < seq {
        assert!(Instant::now() < deadline, "audit log did not commit {seq}; at {}", *rx.borrow());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A log at a fresh path with `n` committed records, closed again.
fn written(n: usize) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let (log, thread) = AuditLog::open(&path, Health::new()).unwrap();
    for i in 0..n {
        log.record(event(i));
    }
    wait_committed(&log, n as i64);
    drop(log);
    thread.join().unwrap();
    (dir, path)
}

#[test]
fn records_are_chained_in_order_and_verify() {
    let (_dir, path) = written(5);
    let r = AuditReader::open(&path).unwrap();
    let all = r.after(0, 100).unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(all[0].prev_hash, chain::GENESIS);
    assert!(all.windows(2).all(|w| w[1].prev_hash == w[0].hash && w[1].time_ns >= w[0].time_ns + 1_000_000));
    assert_eq!((all[2].actor.as_str(), all[2].detail.as_str()), ("officer-2", "巡检确认"));
    assert_eq!(r.after(3, 1).unwrap()[0].seq, 4);
    assert_eq!(r.head().unwrap(), 5);
    assert_eq!(verify_file(&path).unwrap(), Verified::Intact { records: 5 });
}

#[test]
fn a_reopened_log_continues_the_chain() {
    let (_dir, path) = written(2);
    let (log, thread) = AuditLog::open(&path, Health::new()).unwrap();
    assert_eq!(*log.committed().borrow(), 2);
    log.record(event(9));
    wait_committed(&log, 3);
    drop(log);
    thread.join().unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verified::Intact { records: 3 });
}

#[test]
fn an_edited_field_is_named() {
    let (_dir, path) = written(4);
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 3", []).unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verified::Broken(Broken { seq: 3, fault: Fault::HashMismatch }));
}

#[test]
fn a_number_stored_as_text_is_named() {
    let (_dir, path) = written(3);
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE audit SET time = 'yesterday' WHERE seq = 2", []).unwrap();
    assert_eq!(
        verify_file(&path).unwrap(),
        Verified::Broken(Broken { seq: 2, fault: Fault::Unreadable { field: "time" } })
    );
}

#[test]
fn a_deleted_record_is_named() {
    let (_dir, path) = written(4);
    let conn = Connection::open(&path).unwrap();
    conn.execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verified::Broken(Broken { seq: 3, fault: Fault::Gap { expected: 2 } }));
    // Renumbering to hide the gap breaks the link instead.
    conn.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 2", []).unwrap();
    assert!(matches!(verify_file(&path).unwrap(), Verified::Broken(Broken { seq: 2, .. })));
}

#[test]
fn a_missing_file_is_an_error_not_an_empty_chain() {
    let dir = tempfile::tempdir().unwrap();
    assert!(verify_file(&dir.path().join("nope.db")).is_err());
}

#[test]
fn a_failing_disk_holds_records_reports_health_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let health = Health::new();
    let (log, thread) = AuditLog::open(&path, health.clone()).unwrap();
    log.record(event(0));
    wait_committed(&log, 1);
    // Another connection holds the write lock: every commit of the writer fails (busy) until released.
    let blocker = Connection::open(&path).unwrap();
    blocker.busy_timeout(Duration::ZERO).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    log.record(event(1));
    log.record(event(2));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = || health.get("audit").map(|c| c.status);
    while status() != Some(Status::Failed) {
        assert!(Instant::now() < deadline, "the failing audit log was never reported");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*log.committed().borrow(), 1, "nothing committed while the database is locked");
    blocker.execute_batch("COMMIT").unwrap();
    wait_committed(&log, 3);
    assert_eq!(status(), Some(Status::Ok));
    drop(log);
    thread.join().unwrap();
    assert_eq!(verify_file(&path).unwrap(), Verified::Intact { records: 3 });
}

#[test]
fn two_writers_on_one_file_extend_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    // Both open on the empty file, as the daemon and a `parkwatch user add` beside it would.
    let (daemon, daemon_thread) = AuditLog::open(&path, Health::new()).unwrap();
    let (cli, cli_thread) = AuditLog::open(&path, Health::new()).unwrap();
    daemon.record(event(0));
    wait_committed(&daemon, 1);
    // The second writer saw an empty chain when it opened; it must still append after record 1.
    cli.record(event(1));
    wait_committed(&cli, 2);
    drop(cli);
    assert_eq!(cli_thread.join().unwrap(), 0, "nothing lost");
    daemon.record(event(2));
    wait_committed(&daemon, 3);
    drop(daemon);
    assert_eq!(daemon_thread.join().unwrap(), 0, "nothing lost");
    let all = AuditReader::open(&path).unwrap().after(0, 10).unwrap();
    assert_eq!(
        all.iter().map(|r| (r.seq, r.actor.as_str())).collect::<Vec<_>>(),
        [(1, "officer-0"), (2, "officer-1"), (3, "officer-2")]
    );
    assert_eq!(verify_file(&path).unwrap(), Verified::Intact { records: 3 });
}

#[test]
fn writers_racing_on_one_file_never_fork_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let logs: Vec<_> = (0..3).map(|_| AuditLog::open(&path, Health::new()).unwrap()).collect();
    std::thread::scope(|s| {
        for (log, _) in &logs {
            s.spawn(move || {
                for i in 0..50 {
                    log.record(event(i));
                }
            });
        }
    });
    for (log, thread) in logs {
        drop(log);
        assert_eq!(thread.join().unwrap(), 0, "nothing lost");
    }
    assert_eq!(verify_file(&path).unwrap(), Verified::Intact { records: 150 });
}

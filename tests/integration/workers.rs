//! The binary's runtimes (`--threads`, `--runtime`): connections served by worker runtimes, one per thread,
//! or by one work-stealing runtime; either way every batch accepted is answered before SIGTERM's exit.

use http::StatusCode;

use crate::support::*;

/// Connections open at once, each with a batch held at the upstream when SIGTERM comes.
const CONNECTIONS: usize = 24;

/// The binary with `runtime_args` serves `CONNECTIONS` connections at once, each with a batch whose part the
/// upstream holds; after SIGTERM it refuses new connections and still answers every held batch in full before
/// it exits 0. Returns the names of its threads, read while the batches were held.
async fn serves_and_drains(runtime_args: &[&str]) -> Vec<String> {
    let mut held = held_upstream("/held/").await;
    let route = format!("/up/=http://{}", held.upstream.addr);
    let mut args = vec!["--route", &route, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(runtime_args);
    let mut gw = Binary::spawn(
        &args,
        &[
            ("BATCHGATE_LOG", Some("batchgate=info")),
            ("NO_COLOR", Some("1")),
        ],
    );
    let (_, addr) = gw.listening().await;
    let mut clients = Vec::new();
    for i in 0..CONNECTIONS {
        let body = get_batch("b", &[format!("/up/held/{i}")]);
        clients.push(send_batch(addr, &body).await);
    }
    for _ in 0..CONNECTIONS {
        within(10, "a held part", held.arrivals.recv())
            .await
            .unwrap();
    }
    let threads = thread_names(gw.child.id().unwrap());
    gw.signal("-TERM");
    gw.log.wait_for("shutting down").await;
    // The listener is closed: a new client is not served.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "connected after SIGTERM"
    );
    held.release.add_permits(CONNECTIONS);
    for (i, client) in clients.iter_mut().enumerate() {
        let reply = within(10, "a held batch's reply", read_response(client)).await;
        assert_eq!(reply.status, StatusCode::OK);
        let parts = reply.reply().parts();
        assert_eq!(statuses(&parts), [200], "batch {i}");
        assert_eq!(part_body(&parts[0]), format!("/up/held/{i}"));
    }
    let status = within(10, "the exit", gw.child.wait()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    gw.log.rest().await;
    assert!(
        gw.log
            .seen
            .iter()
            .any(|l| l.contains("all connections finished")),
        "{:#?}",
        gw.log.seen
    );
    threads
}

/// The names of a process's threads (`/proc/PID/task/*/comm`, at most 15 bytes each).
fn thread_names(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|task| {
            let comm = std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap();
            comm.trim_end().to_owned()
        })
        .collect()
}

fn workers(threads: &[String]) -> usize {
    // "batchgate-worker-N", cut to 15 bytes by the kernel.
    threads
        .iter()
        .filter(|t| t.starts_with("batchgate-worke"))
        .count()
}

/// The default runtime: `--threads 2` starts two worker runtimes, and they drain on SIGTERM.
#[tokio::test]
async fn two_workers_serve_many_connections_and_drain_them_on_sigterm() {
    let threads = serves_and_drains(&["--threads", "2"]).await;
    assert_eq!(workers(&threads), 2, "{threads:?}");
}

/// `--runtime work-stealing`: one multi-thread runtime, no workers, the same service and drain.
#[tokio::test]
async fn the_work_stealing_runtime_serves_and_drains_as_well() {
    let threads = serves_and_drains(&["--runtime", "work-stealing", "--threads", "2"]).await;
    assert_eq!(workers(&threads), 0, "{threads:?}");
}

/// `--threads 0` and an unknown `--runtime` are refused before anything starts, naming the flag.
#[tokio::test]
async fn bad_runtime_flags_are_refused_naming_the_flag() {
    for (args, flag) in [
        (["--threads", "0"], "--threads"),
        (["--runtime", "green"], "--runtime"),
    ] {
        let mut all = vec!["--route", "/up/=http://127.0.0.1:9"];
        all.extend_from_slice(&args);
        let mut gw = Binary::spawn(&all, &[("NO_COLOR", Some("1"))]);
        let status = within(10, "the exit", gw.child.wait()).await.unwrap();
        assert_eq!(status.code(), Some(2), "{args:?}");
        gw.log.rest().await;
        let log = gw.log.seen.join("\n");
        assert!(log.contains(flag), "{args:?}: {log}");
    }
}

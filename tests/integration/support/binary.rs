//! The real `batchgate` binary, run as a child process.

use std::net::SocketAddr;

use super::within;

/// `batchgate` run as a child process (killed when dropped), and its log.
pub(crate) struct Binary {
    pub child: tokio::process::Child,
    pub log: BinaryLog,
}

impl Binary {
    /// `batchgate ARGS`, its stderr read line by line as it comes (so it never blocks on a full pipe), with the
    /// environment variables `env` set (`Some`) or removed (`None`).
    pub(crate) fn spawn(args: &[&str], env: &[(&str, Option<&str>)]) -> Binary {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchgate"));
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let mut child = command.spawn().unwrap();
        let log = BinaryLog::of(&mut child);
        Binary { child, log }
    }

    /// Waits for the gateway's "listening on SCHEME://ADDR/" line.
    pub(crate) async fn listening(&mut self) -> (&'static str, SocketAddr) {
        let line = self.log.wait_for("listening on ").await;
        listening_on(&line).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Sends the process `signal` (`"-TERM"`, `"-HUP"`) with `kill`.
    pub(crate) fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

/// The scheme and address of a "listening on SCHEME://ADDR/" log line (plain or JSON).
pub(crate) fn listening_on(line: &str) -> Option<(&'static str, SocketAddr)> {
    ["http", "https"].into_iter().find_map(|scheme| {
        let rest = line.split(&format!("listening on {scheme}://")).nth(1)?;
        Some((scheme, rest.split('/').next()?.parse().ok()?))
    })
}

/// The binary's stderr, line by line.
pub(crate) struct BinaryLog {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl BinaryLog {
    fn of(child: &mut tokio::process::Child) -> BinaryLog {
        use tokio::io::AsyncBufReadExt;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let _ = tx.send(line);
            }
        });
        BinaryLog {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `text`; returns it.
    pub(crate) async fn wait_for(&mut self, text: &str) -> String {
        within(20, text, async {
            loop {
                let line =
                    self.lines.recv().await.unwrap_or_else(|| {
                        panic!("stderr ended before {text:?}: {:#?}", self.seen)
                    });
                self.seen.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
        })
        .await
    }

    /// Every line until the process closes stderr.
    pub(crate) async fn rest(&mut self) {
        within(20, "stderr to end", async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line);
            }
        })
        .await;
    }
}

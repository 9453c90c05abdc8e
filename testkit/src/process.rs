//! Servers started for a test or a benchmark: output to a log file, port 0, and one rule for
//! reading back where they listen.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a server may take to say where it listens.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// A server process, killed when dropped.
pub struct Service {
    pub child: Child,
    /// `http://<address it listens on>`.
    pub url: String,
    pub log: PathBuf,
}

impl Service {
    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a server's log says it listens: `http_addr=<addr>` (every `grandstand` role) or a line
/// `listening <port>` (the benchmark peers). Pure, so the rule is tested on its own.
pub fn listening_url(log: &str) -> Option<String> {
    // `--log-format json`: `"http_addr":"127.0.0.1:41234"`.
    if let Some(i) = log.find("\"http_addr\":\"") {
        let addr: String = log[i + "\"http_addr\":\"".len()..]
            .chars()
            .take_while(|c| *c != '"')
            .collect();
        return Some(format!("http://{addr}"));
    }
    if let Some(i) = log.find("http_addr=") {
        let addr: String = log[i + "http_addr=".len()..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        return Some(format!("http://{addr}"));
    }
    log.lines()
        .find_map(|l| l.strip_prefix("listening "))
        .and_then(|p| p.trim().parse::<u16>().ok())
        .map(|port| format!("http://127.0.0.1:{port}"))
}

/// A fresh log file under the temporary directory, named after `what`.
pub fn log_file(what: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = std::env::temp_dir().join(format!(
        "gs-{what}-{}-{:08x}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// Starts `cmd` with its stdout and stderr in `log` (stdin closed).
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Child> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdout(file.try_clone()?)
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

/// Waits (blocking the thread) until the process's log says where it listens.
pub fn wait_listening(child: Child, log: PathBuf) -> anyhow::Result<Service> {
    let mut service = Service {
        child,
        url: String::new(),
        log,
    };
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let text = service.output();
        if let Some(url) = listening_url(&text) {
            service.url = url;
            return Ok(service);
        }
        if let Ok(Some(status)) = service.child.try_wait() {
            bail!("server exited with {status} before listening:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("server did not start within {START_LIMIT:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`wait_listening`], without blocking the async runtime's thread.
pub async fn wait_listening_async(child: Child, log: PathBuf) -> anyhow::Result<Service> {
    let mut service = Service {
        child,
        url: String::new(),
        log,
    };
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let text = service.output();
        if let Some(url) = listening_url(&text) {
            service.url = url;
            return Ok(service);
        }
        if let Ok(Some(status)) = service.child.try_wait() {
            bail!("server exited with {status} before listening:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("server did not start within {START_LIMIT:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `grandstand` binary: `$GRANDSTAND_BIN`, else the one cargo built next to the running
/// executable (`target/<profile>/`, also from a test binary in `target/<profile>/deps/`).
pub fn grandstand_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("GRANDSTAND_BIN") {
        return PathBuf::from(bin);
    }
    let me = std::env::current_exe().expect("the running executable's path");
    let dir = me.parent().expect("executable in a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps has a parent")
    } else {
        dir
    };
    dir.join("grandstand")
}

/// A TCP port free right now on 127.0.0.1 (for servers that cannot take port 0).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs `cmd` to completion and returns what it printed, failing the test with its stderr if
/// it did not succeed.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{:?} {:?}: {}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until something accepts connections on 127.0.0.1:`port`, at most `limit`.
pub async fn wait_for_port(port: u16, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} did not start on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_of_saying_where_a_server_listens_are_read() {
        let grandstand = "2026-12-02T01:00:00Z  INFO grandstand: HTTP listening http_addr=127.0.0.1:41234 role=All\n";
        assert_eq!(
            listening_url(grandstand).as_deref(),
            Some("http://127.0.0.1:41234")
        );
        assert_eq!(
            listening_url("starting\nlistening 5123\n").as_deref(),
            Some("http://127.0.0.1:5123")
        );
        assert_eq!(listening_url("starting\nlistening soon\n"), None);
        let json = r#"{"timestamp":"2026-12-02T01:00:00Z","level":"INFO","http_addr":"127.0.0.1:41234","role":"all","message":"HTTP listening"}"#;
        assert_eq!(
            listening_url(json).as_deref(),
            Some("http://127.0.0.1:41234")
        );
        assert_eq!(listening_url(""), None);
    }
}

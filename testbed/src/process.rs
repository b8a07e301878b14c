//! Child processes that cannot outlive the process that started them.
//!
//! The shared test bed lives in a `static`, whose destructor never runs, so each component is
//! started under a small `sh` watchdog: its stdin is a pipe held by us, and when we exit (however
//! we exit) the pipe closes and the watchdog kills the component. No unsafe `pre_exec` needed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

const WATCHDOG: &str = r#"pidfile=$1; shift
exec 3<&0
"$@" </dev/null & c=$!
echo "$c" > "$pidfile"
( while read -r _; do :; done; kill -KILL "$c" 2>/dev/null ) <&3 &
w=$!
wait "$c"; s=$?
kill "$w" 2>/dev/null
exit $s"#;

/// A running component. Dropping it kills the component.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    wrapper: Child,
    _stdin: ChildStdin,
    pid: u32,
}

impl Proc {
    /// Starts `program args...`, appending its stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Proc, String> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let pidfile = log.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("watchdog")
            .arg(&pidfile)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {name} ({}): {e}", program.display()))?;
        let stdin = wrapper.stdin.take().expect("stdin is piped");
        let deadline = Instant::now() + Duration::from_secs(5);
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            if Instant::now() > deadline {
                return Err(format!("{name}: the watchdog never reported a pid"));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            wrapper,
            _stdin: stdin,
            pid,
        })
    }

    /// The component's own pid (not the watchdog's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the component is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.wrapper.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`) to the component.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit.
    pub fn stop(&mut self, grace: Duration) {
        self.signal("TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.wrapper.wait();
    }

    /// The component's whole log.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the component's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last {} lines of {} ---\n{}",
        all.len() - start,
        path.display(),
        all[start..].join("\n")
    )
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Polls `check` until it returns true, or fails with `what` and the log tail after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    proc: &mut Proc,
    mut check: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return Ok(());
        }
        if !proc.is_running() {
            return Err(format!(
                "{what}: {} exited\n{}",
                proc.name,
                proc.log_tail(40)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what}: not ready after {timeout:?}\n{}",
                proc.log_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A plain HTTP/1.0 GET on 127.0.0.1:`port` (no HTTP client needed): (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Writes `contents` to `path`, creating parent directories.
pub fn write_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    File::create(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(|e| format!("{}: {e}", path.display()))
}

//! A `nats-server` child process on a free loopback port with its own
//! JetStream folder, killed when dropped. Used by `custody up`, the bench
//! and the tests: nothing here is mocked.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};

/// Oldest nats-server we run against (Debian's 2.9 is not supported).
const MIN_VERSION: (u32, u32) = (2, 10);

pub struct NatsServer {
    /// The running server; killed on drop.
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Client port, kept so a restart can reuse it.
    pub port: u16,
    /// JetStream folder, kept across restarts.
    pub store_dir: PathBuf,
    /// Configuration file (`-c`: the accounts block), if any.
    pub config: Option<PathBuf>,
}

/// Finds a nats-server: `$CUSTODY_NATS_SERVER`, the one `deploy/nats-server.sh`
/// installed into `deploy/.bin`, or one on PATH if it is 2.10 or newer.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CUSTODY_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/.bin/nats-server");
    if pinned.is_file() {
        return Ok(pinned);
    }
    let on_path =
        std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("nats-server")).find(|p| p.is_file());
    let Some(p) = on_path else {
        bail!("no nats-server found: run deploy/nats-server.sh (installs 2.15.1) or set CUSTODY_NATS_SERVER");
    };
    let out = Command::new(&p).arg("--version").output().context("cannot run nats-server --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().trim_start_matches("nats-server: v");
    let mut parts = version.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_VERSION {
        bail!("{} is nats-server {version}; 2.10 or newer is needed: run deploy/nats-server.sh", p.display());
    }
    Ok(p)
}

impl NatsServer {
    /// Starts a server on a free loopback port, JetStream under `store_dir`.
    pub fn start(store_dir: &Path) -> anyhow::Result<NatsServer> {
        Self::spawn(store_dir, None, None)
    }

    /// The same, loading `config` (for example the accounts block
    /// written by `custody authz`); SIGHUP makes it reload the file.
    pub fn start_with_config(store_dir: &Path, config: &Path) -> anyhow::Result<NatsServer> {
        Self::spawn(store_dir, None, Some(config))
    }

    /// The server's process id (to signal a reload).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts it again on the same port and folder (after [`NatsServer::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut fresh = Self::spawn(&self.store_dir.clone(), Some(self.port), self.config.clone().as_deref())?;
        // `fresh` leaves with the dead child; dropping it kills nothing.
        std::mem::swap(&mut self.child, &mut fresh.child);
        Ok(())
    }

    fn spawn(store_dir: &Path, port: Option<u16>, config: Option<&Path>) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(store_dir)?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut cmd = Command::new(binary()?);
        die_with_parent(&mut cmd);
        if let Some(c) = config {
            cmd.arg("-c").arg(c);
        }
        let mut child = cmd
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(store_dir)
            .args(["--http_port", "0", "-m", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start nats-server")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        // Reads the log for the port, then keeps draining it so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let echo = std::env::var_os("CUSTODY_NATS_LOG").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("nats-server: {line}");
                }
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    let port = rest.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let mut server = NatsServer { child, url: String::new(), port: 0, store_dir: store_dir.to_owned(), config: config.map(Path::to_path_buf) };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(port)) => {
                server.port = port;
                server.url = format!("nats://127.0.0.1:{port}");
                Ok(server)
            }
            _ => bail!("nats-server did not start listening (is the port {port_arg} free?)"),
        }
    }

    /// kill -9, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the kernel to kill the child if its parent dies first, so that not
/// even a `kill -9` of the parent leaves a server holding ports and files.
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

//! A `nats-server` child process on a free loopback port with its own
//! JetStream folder, killed when dropped; or three of them as one
//! JetStream cluster. Used by `custody up`, the bench and the tests:
//! nothing here is mocked. Every server runs JetStream with
//! `sync_interval: always`, so an acknowledged write is on disk (on a
//! majority of a cluster's servers), not only in their page caches.

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
    /// What it runs besides JetStream; kept for a restart.
    pub setup: Setup,
    /// Where leaf nodes (edges) connect, `nats-leaf://127.0.0.1:PORT`, if
    /// it takes them.
    pub leaf_url: Option<String>,
    /// Where the server writes its process id (its `pid_file`), rewritten
    /// at every start: what `custody authz` reads to signal a reload.
    pub pid_file: PathBuf,
    /// Set once the server's log names a JetStream metadata leader.
    meta_leader: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The last lines of its log, to say why when it does not come up.
    log_tail: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

/// Log lines kept per server for an error message.
const LOG_TAIL: usize = 12;

/// What a server runs besides JetStream with every write synced.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// A configuration file to include: the accounts block written by
    /// `custody authz`, or an edge's accounts and leaf remote.
    pub include: Option<PathBuf>,
    /// Its place in a cluster, if it is in one.
    pub cluster: Option<Member>,
    /// Its own JetStream domain (an edge's), so that its streams are never
    /// mistaken for the hub's.
    pub domain: Option<String>,
    /// Take leaf node connections (edges) on loopback: on this port, or a
    /// free one for 0. The port found is kept for restarts.
    pub leaf_port: Option<u16>,
    /// The client port (a free one when absent).
    pub port: Option<u16>,
}

/// A server's place in a cluster: its name and the route ports of all.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub index: usize,
    pub route_ports: Vec<u16>,
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
        Self::spawn(store_dir, Setup::default())
    }

    /// The same, loading `config` (for example the accounts block
    /// written by `custody authz`); SIGHUP makes it reload the file.
    pub fn start_with_config(store_dir: &Path, config: &Path) -> anyhow::Result<NatsServer> {
        Self::spawn(store_dir, Setup { include: Some(config.to_owned()), ..Setup::default() })
    }

    /// A server with everything `setup` says.
    pub fn start_as(store_dir: &Path, setup: Setup) -> anyhow::Result<NatsServer> {
        Self::spawn(store_dir, setup)
    }

    /// The server's process id (to signal a reload).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has ended (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Starts it again on the same port and folder (after [`NatsServer::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let setup = Setup { port: Some(self.port), ..self.setup.clone() };
        let mut fresh = Self::spawn(&self.store_dir.clone(), setup)?;
        // `fresh` leaves with the dead child; dropping it kills nothing.
        std::mem::swap(&mut self.child, &mut fresh.child);
        self.leaf_url = fresh.leaf_url.take();
        std::mem::swap(&mut self.meta_leader, &mut fresh.meta_leader);
        std::mem::swap(&mut self.log_tail, &mut fresh.log_tail);
        Ok(())
    }

    /// The server's own configuration file: JetStream under `store_dir`
    /// with every write synced, the included accounts file, the cluster.
    /// It sits next to the accounts file, since nats-server resolves an
    /// include relative to the including file.
    fn write_config(store_dir: &Path, setup: &Setup) -> anyhow::Result<(PathBuf, PathBuf)> {
        let store = std::path::absolute(store_dir)?;
        let domain = setup.domain.as_ref().map(|d| format!("  domain: {d:?}\n")).unwrap_or_default();
        let mut text = format!("jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n{domain}}}\n", store.display().to_string());
        if let Some(port) = setup.leaf_port {
            // Edges reach the hub by the URLs they are given (`--hub`), never
            // by addresses the hub advertises: a mine's link is what its
            // operator configured.
            text.push_str(&format!("leafnodes {{\n  listen: \"127.0.0.1:{port}\"\n  no_advertise: true\n}}\n"));
        }
        let name = store.file_name().map_or_else(|| "nats".to_owned(), |n| n.to_string_lossy().into_owned());
        let dir = match setup.include.as_deref() {
            Some(c) => {
                let c = std::path::absolute(c)?;
                let file = c.file_name().context("the accounts file has no name")?.to_string_lossy().into_owned();
                text.push_str(&format!("include {file:?}\n"));
                c.parent().map(Path::to_path_buf).unwrap_or_default()
            }
            None => store.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        if let Some(m) = &setup.cluster {
            let routes: Vec<String> = m.route_ports.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
            text.push_str(&format!(
                "server_name: {:?}\ncluster {{\n  name: \"custody\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                m.name,
                m.route_ports[m.index],
                routes.join(", ")
            ));
        }
        let pid_file = dir.join(format!("{name}.pid"));
        text.push_str(&format!("pid_file: {:?}\n", pid_file.display().to_string()));
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok((path, pid_file))
    }

    fn spawn(store_dir: &Path, mut setup: Setup) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(store_dir)?;
        // Its ports are chosen here, not by the server, and kept for a
        // restart (see `free_ports`).
        let port = match setup.port {
            Some(p) => p,
            None => free_ports(1)?[0],
        };
        setup.port = Some(port);
        if setup.leaf_port == Some(0) {
            setup.leaf_port = Some(free_ports(1)?[0]);
        }
        let port_arg = port.to_string();
        let (own, pid_file) = Self::write_config(store_dir, &setup)?;
        let mut cmd = Command::new(binary()?);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .arg("-c")
            .arg(&own)
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .args(["--http_port", "0", "-m", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start nats-server")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = mpsc::channel();
        let (leaf_tx, leaf_rx) = mpsc::channel();
        let meta_leader = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = meta_leader.clone();
        let log_tail = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::with_capacity(LOG_TAIL)));
        let tail = log_tail.clone();
        // Reads the log for the port, then keeps draining it so the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let echo = std::env::var_os("CUSTODY_NATS_LOG").is_some();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("nats-server: {line}");
                }
                if let Ok(mut t) = tail.lock() {
                    if t.len() == LOG_TAIL {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                if line.contains("JetStream cluster new metadata leader") || line.contains("Self is new JetStream cluster metadata leader") {
                    seen.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(rest) = line.split("Listening for leafnode connections on ").nth(1) {
                    let _ = leaf_tx.send(rest.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
                }
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    let port = rest.trim().rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let takes_leaves = setup.leaf_port.is_some();
        let mut server =
            NatsServer { child, url: String::new(), port: 0, store_dir: store_dir.to_owned(), setup, leaf_url: None, pid_file, meta_leader, log_tail };
        // The server names its leaf port before its client port.
        if takes_leaves {
            match leaf_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Some(port)) => {
                    server.setup.leaf_port = Some(port);
                    server.leaf_url = Some(format!("nats-leaf://127.0.0.1:{port}"));
                }
                _ => bail!("nats-server did not start listening for leaf nodes"),
            }
        }
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

/// Three (or `n`) servers as one JetStream cluster on loopback, each with
/// its own folder `base/nats-<i>`; killed when dropped.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(n: usize, base: &Path, config: Option<&Path>) -> anyhow::Result<NatsCluster> {
        let route_ports = free_ports(n)?;
        let mut servers = Vec::with_capacity(n);
        for index in 0..n {
            let member = Member { name: format!("n{}", index + 1), index, route_ports: route_ports.clone() };
            let setup = Setup { include: config.map(Path::to_path_buf), cluster: Some(member), leaf_port: Some(0), ..Setup::default() };
            servers.push(NatsServer::spawn(&base.join(format!("nats-{}", index + 1)), setup)?);
        }
        let mut cluster = NatsCluster { servers };
        cluster.ready()?;
        Ok(cluster)
    }

    /// Waits until the servers have elected a JetStream metadata leader:
    /// before that, a JetStream request goes unanswered until it times out.
    /// An election takes seconds; the wait is long because a loaded
    /// machine (two cores running a test suite) can stretch it. When none
    /// comes, or a server ends, the error carries each server's last log
    /// lines.
    pub fn ready(&mut self) -> anyhow::Result<()> {
        const WAIT: Duration = Duration::from_secs(90);
        let deadline = std::time::Instant::now() + WAIT;
        while !self.servers.iter().any(|s| s.meta_leader.load(std::sync::atomic::Ordering::Relaxed)) {
            let ended: Vec<String> = self.servers.iter_mut().enumerate().filter_map(|(i, s)| s.exited().map(|st| format!("server {} {st}", i + 1))).collect();
            if !ended.is_empty() {
                bail!("a nats-server ended before the cluster elected a JetStream leader ({}):\n{}", ended.join(", "), self.log_tails());
            }
            if std::time::Instant::now() > deadline {
                bail!("the nats-servers elected no JetStream leader within {} s:\n{}", WAIT.as_secs(), self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Each server's last log lines, for an error message.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.servers.iter().enumerate() {
            out.push_str(&format!("--- server {} ---\n", i + 1));
            for line in s.log_tail.lock().map(|t| t.iter().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Every server's URL, comma-separated: what clients connect with.
    pub fn url(&self) -> String {
        self.servers.iter().map(|s| s.url.as_str()).collect::<Vec<_>>().join(",")
    }

    /// Every server's pid file (see [`NatsServer::pid_file`]).
    pub fn pid_files(&self) -> Vec<PathBuf> {
        self.servers.iter().map(|s| s.pid_file.clone()).collect()
    }

    /// Starts again, on its port and folder, every server whose process
    /// has ended; says which (its index and how it ended) and whether it
    /// runs again.
    pub fn revive(&mut self) -> Vec<(usize, std::process::ExitStatus, anyhow::Result<u32>)> {
        let mut revived = Vec::new();
        for (i, s) in self.servers.iter_mut().enumerate() {
            if let Some(status) = s.exited() {
                let again = s.restart().map(|()| s.pid());
                revived.push((i, status, again));
            }
        }
        revived
    }

    /// Hands the servers to a thread of their own that starts again, on
    /// its port and folder, each one that ends (saying so through `say`),
    /// until the [`Kept`] is dropped; then they are stopped and reaped. A
    /// thread of its own, because a child started with [`die_with_parent`]
    /// dies with the thread that started it, not only with the process.
    pub fn keep(self, mut say: impl FnMut(String) + Send + 'static) -> anyhow::Result<Kept> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("nats-keeper".into()).spawn(move || {
            let mut cluster = self;
            let mut pause = Duration::from_millis(500);
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(pause) {
                pause = Duration::from_millis(500);
                for (i, status, again) in cluster.revive() {
                    let url = &cluster.servers[i].url;
                    match again {
                        Ok(pid) => say(format!("nats-server {} ({url}): ended ({status}); started again, process {pid}", i + 1)),
                        Err(e) => {
                            say(format!("nats-server {} ({url}): ended ({status}); cannot start it again ({e:#}); trying again in 5 s", i + 1));
                            pause = Duration::from_secs(5);
                        }
                    }
                }
            }
        })?;
        Ok(Kept { stop: Some(stop), thread: Some(thread) })
    }
}

/// Servers kept running by [`NatsCluster::keep`]; dropping it stops them.
pub struct Kept {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Kept {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Loopback ports free a moment ago, for a server that must be told its
/// ports before it starts: a cluster's routes (every server must know all
/// of them), a restart on the same ports, a test's own listener.
///
/// They are drawn at random from outside the kernel's ephemeral range
/// (`ip_local_port_range`), so no port-0 bind and no outgoing connection
/// (our own servers' routes included) can take one between this check
/// and the server's bind: a kernel-chosen port once took a route port
/// reserved this way, and the server that needed it could not start.
/// This process never hands out the same port twice.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    use rand::RngExt as _;
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let (lo, hi) = ephemeral_range();
    // Below the ephemeral range (above the ports services usually take),
    // and above it.
    let below = (10_000u16..lo).len();
    let above = (hi.saturating_add(1)..=u16::MAX).count();
    if below + above < n {
        bail!("no loopback ports outside the ephemeral range {lo}-{hi}");
    }
    let mut rng = rand::rng();
    let mut held = Vec::with_capacity(n);
    for _ in 0..(100 * n + 1_000) {
        if held.len() == n {
            break;
        }
        let k = rng.random_range(0..below + above);
        let port = if k < below { 10_000 + k as u16 } else { hi + 1 + (k - below) as u16 };
        if given.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            given.insert(port);
            held.push(l);
        }
    }
    if held.len() < n {
        bail!("found only {} free loopback ports of the {n} needed", held.len());
    }
    Ok(held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?)
}

/// The kernel's range for port-0 binds and outgoing connections (Linux's
/// default where it cannot be read).
fn ephemeral_range() -> (u16, u16) {
    let read = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let parsed = read.and_then(|t| {
        let mut it = t.split_whitespace().map(|w| w.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    match parsed {
        Some((lo, hi)) if lo <= hi => (lo, hi),
        _ => (32_768, 60_999),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn ports_handed_out_are_free_outside_the_ephemeral_range_and_never_given_twice() {
        let (lo, hi) = super::ephemeral_range();
        let first = super::free_ports(50).expect("50 ports");
        let second = super::free_ports(50).expect("50 more");
        let all: BTreeSet<u16> = first.iter().chain(&second).copied().collect();
        assert_eq!(all.len(), 100, "a port was handed out twice: {first:?} {second:?}");
        assert!(all.iter().all(|p| *p < lo || *p > hi), "a port inside the ephemeral range {lo}-{hi}: {all:?}");
        // Free now: a server told one of them can listen on it.
        let listeners: Vec<_> = all.iter().map(|p| std::net::TcpListener::bind(("127.0.0.1", *p))).collect();
        assert!(listeners.iter().all(Result::is_ok), "{listeners:?}");
    }
}

//! A TCP relay on loopback that can be cut and restored: the satellite
//! link between an edge and its hub, for the tests and `custody bench
//! edge`. Cut, it closes every connection it carries and every new one at
//! once, as a link that is down does; restored, it carries them again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Link {
    /// Where the relay listens on 127.0.0.1.
    pub port: u16,
    up: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: JoinHandle<()>,
}

impl Link {
    /// A relay to `127.0.0.1:target`, up.
    pub async fn to(target: u16) -> anyhow::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let carried: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (up2, carried2) = (up.clone(), carried.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut all = carried2.lock().unwrap_or_else(|e| e.into_inner());
                all.retain(|h| !h.is_finished());
                all.push(relay);
            }
        });
        Ok(Link { port, up, carried, accepting })
    }

    /// Takes the link down: every connection on it is closed.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for h in self.carried.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }

    /// Brings it back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

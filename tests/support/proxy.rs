//! A TCP proxy a test can cut and restore: an outage of a RabbitMQ, a
//! Kafka or a subscriber without stopping the real server (other suites
//! share it). Cut, nothing listens at the proxy's port (connections are
//! refused) and every connection through it is closed; restored, it
//! listens at the same port again.

use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    target: String,
    /// Bumped by each cut: the connections of the earlier generation close.
    generation: watch::Sender<u64>,
    accepting: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// A proxy on a free local port forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Proxy {
            port,
            target: target.to_owned(),
            generation: watch::channel(0).0,
            accepting: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// A proxy on `port` (free, reserved by the caller) forwarding to
    /// `target`: for a server that must know the proxy's address first.
    pub async fn start_at(port: u16, target: &str) -> Proxy {
        let proxy = Proxy {
            port,
            target: target.to_owned(),
            generation: watch::channel(0).0,
            accepting: Mutex::new(None),
        };
        proxy.restore().await;
        proxy
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The outage begins: the port refuses connections, open ones close.
    pub fn cut(&self) {
        if let Some(task) = self.accepting.lock().expect("lock").take() {
            task.abort();
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// The outage ends: the same port accepts again.
    pub async fn restore(&self) {
        // The aborted accept task lets go of the port as it ends.
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", self.port)).await {
                self.serve(listener);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the proxy's port {} did not come free again", self.port);
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target.clone();
        let generation = self.generation.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(forward(inbound, target.clone(), generation.clone()));
            }
        });
        *self.accepting.lock().expect("lock") = Some(task);
    }
}

/// Copies both ways until either side closes or the proxy is cut.
async fn forward(mut inbound: TcpStream, target: String, mut cut: watch::Receiver<u64>) {
    cut.mark_unchanged();
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.changed() => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

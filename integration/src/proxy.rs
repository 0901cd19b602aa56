//! A TCP proxy for one directed node-to-node link, which tests can cut and heal.
//!
//! Each node dials each peer on its own connection, so a proxy placed on the address node
//! `i` dials for node `j` carries exactly the traffic `i -> j`. Cutting it closes every open
//! connection at once and closes new ones as soon as they are accepted, until healed: to the
//! nodes it looks like a peer that keeps resetting connections. Blackholing it instead
//! keeps every connection open but silent, as a real network partition does: only
//! timeouts and keepalives can tell.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Connections accepted while healed live until this token is cancelled (by a cut or by
/// dropping the proxy). A heal installs a fresh token for the connections that follow.
#[derive(Debug)]
struct Link {
    cut: bool,
    /// When cut: hold connections open and silent instead of closing them.
    blackhole: bool,
    generation: CancellationToken,
    /// Ends the connections a blackhole holds (on heal).
    held: CancellationToken,
}

/// A proxy on `127.0.0.1:0` forwarding to one target; stops when dropped.
#[derive(Debug)]
pub struct LinkProxy {
    addr: SocketAddr,
    target: SocketAddr,
    link: Arc<Mutex<Link>>,
    /// Parent of every generation's token: cancelled on drop, ending every connection.
    shutdown: CancellationToken,
    accept: JoinHandle<()>,
}

impl LinkProxy {
    /// Binds a loopback port and starts forwarding connections to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind link proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shutdown = CancellationToken::new();
        let link = Arc::new(Mutex::new(Link {
            cut: false,
            blackhole: false,
            generation: shutdown.child_token(),
            held: shutdown.child_token(),
        }));
        let accept = tokio::spawn(accept_loop(listener, target, link.clone()));
        Self {
            addr,
            target,
            link,
            shutdown,
            accept,
        }
    }

    /// Where the proxy listens (what the dialing node is told its peer's address is).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Closes every open connection and closes new ones immediately until [`Self::heal`].
    pub fn cut(&self) {
        let mut link = self.link.lock().expect("link lock");
        link.cut = true;
        link.blackhole = false;
        link.generation.cancel();
    }

    /// Stops forwarding without closing anything: open connections and new ones stay
    /// open but carry no bytes until [`Self::heal`] (which then closes them).
    pub fn blackhole(&self) {
        let mut link = self.link.lock().expect("link lock");
        link.cut = true;
        link.blackhole = true;
        link.generation.cancel();
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        let mut link = self.link.lock().expect("link lock");
        if link.cut {
            link.cut = false;
            link.blackhole = false;
            link.generation = self.shutdown.child_token();
            link.held.cancel();
            link.held = self.shutdown.child_token();
        }
    }

    /// Whether the link is currently cut.
    pub fn is_cut(&self) -> bool {
        self.link.lock().expect("link lock").cut
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, link: Arc<Mutex<Link>>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Transient accept errors (e.g. too many open files): back off briefly.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        // Take the tokens under the lock, so a concurrent cut either treats this
        // connection here or cancels the token it gets.
        let (generation, held) = {
            let link = link.lock().expect("link lock");
            let generation = (!link.cut).then(|| link.generation.clone());
            let held = (link.cut && link.blackhole).then(|| link.held.clone());
            (generation, held)
        };
        match (generation, held) {
            (Some(token), _) => {
                let link = link.clone();
                tokio::spawn(forward(inbound, target, token, link));
            }
            // Blackholed: keep the connection open and silent.
            (None, Some(held)) => {
                tokio::spawn(async move {
                    held.cancelled().await;
                    drop(inbound);
                });
            }
            (None, None) => drop(inbound),
        }
    }
}

/// Copies both ways until either side closes or the link is cut; dropping the streams
/// closes both, except under a blackhole, which holds them open and silent until healed.
async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    token: CancellationToken,
    link: Arc<Mutex<Link>>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return; // the target is down: the dialer sees its connection closed
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        biased;
        () = token.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
    }
    let held = {
        let link = link.lock().expect("link lock");
        (link.cut && link.blackhole).then(|| link.held.clone())
    };
    if let Some(held) = held {
        held.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server on loopback; runs until the test's runtime ends.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo address");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    /// Sends `msg` and expects it echoed back.
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.expect("write");
        let mut buf = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(buf, msg);
    }

    /// The connection ends (EOF or reset) within a few seconds, even if we write to it.
    async fn assert_closed(s: &mut TcpStream) {
        let _ = s.write_all(b"ping").await; // may fail already; that is fine
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("connection closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "connection still carries data: {read:?}"
        );
    }

    #[tokio::test]
    async fn forwards_cuts_and_heals() {
        let proxy = LinkProxy::start(echo_server().await).await;

        let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut before, b"hello").await;

        proxy.cut();
        assert!(proxy.is_cut());
        assert_closed(&mut before).await;
        let mut during = TcpStream::connect(proxy.addr())
            .await
            .expect("the listener still accepts");
        assert_closed(&mut during).await;

        proxy.heal();
        assert!(!proxy.is_cut());
        let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut after, b"healed").await;
        round_trip(&mut after, b"again").await;
    }

    /// Nothing comes back within a short while, and the connection is not closed.
    async fn assert_silent(s: &mut TcpStream) {
        s.write_all(b"ping")
            .await
            .expect("write into the blackhole");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(read.is_err(), "a blackholed connection answered: {read:?}");
    }

    #[tokio::test]
    async fn blackholes_hold_connections_silent_until_healed() {
        let proxy = LinkProxy::start(echo_server().await).await;
        let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut before, b"hello").await;

        proxy.blackhole();
        assert_silent(&mut before).await;
        let mut during = TcpStream::connect(proxy.addr()).await.expect("accepted");
        assert_silent(&mut during).await;

        proxy.heal();
        assert_closed(&mut before).await;
        assert_closed(&mut during).await;
        let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut after, b"healed").await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = LinkProxy::start(echo_server().await).await;
        let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
        round_trip(&mut conn, b"x").await;
        drop(proxy);
        assert_closed(&mut conn).await;
    }
}

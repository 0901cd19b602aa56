//! The server side of every gRPC port: an accept loop that limits concurrent
//! connections, runs TLS handshakes off the accept path (a slow or silent client cannot
//! hold up others), and hands tonic connections that carry their verified client
//! certificate ([`ConnInfo`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::ServerTls;

/// Longest a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted but not yet taken by the server.
const BACKLOG: usize = 64;

/// A bound socket, TCP or Unix (`unix://` API addresses).
#[derive(Debug)]
pub enum Listener {
    /// `host:port`.
    Tcp(TcpListener),
    /// A Unix domain socket path.
    Unix(UnixListener),
}

/// How a listener treats its connections.
#[derive(Debug, Clone, Default)]
pub struct ListenerOptions {
    /// TLS (and mTLS) for every connection; `None` = plaintext (h2c).
    pub tls: Option<Arc<ServerTls>>,
    /// Most connections open at once; more wait in the kernel's backlog. `None` = no bound.
    pub max_connections: Option<usize>,
    /// TCP keepalive probing after this much idle time.
    pub tcp_keepalive: Option<Duration>,
}

/// Who is on the other end of a connection: what each request's extensions carry.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The client's address (`None` on a Unix socket).
    pub remote_addr: Option<SocketAddr>,
    /// The client's certificate chain, leaf first, as verified in the handshake (mTLS).
    pub peer_certificates: Option<Arc<[CertificateDer<'static>]>>,
}

type Socket = Either<TcpStream, UnixStream>;

/// One accepted connection, plaintext or TLS.
pub struct Conn {
    io: Either<Socket, Box<tokio_rustls::server::TlsStream<Socket>>>,
    info: ConnInfo,
    /// Held while the connection is open: its slot under `max_connections`.
    _slot: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

impl Listener {
    /// The TCP address bound (`None` for a Unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr().ok(),
            Self::Unix(_) => None,
        }
    }

    /// Accepts until `stop`, yielding connections ready for HTTP/2 (handshake done).
    pub fn incoming(
        self,
        options: ListenerOptions,
        stop: CancellationToken,
    ) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = mpsc::channel(BACKLOG);
        let slots = options.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        let span = tracing::info_span!("accept", addr = ?self.local_addr());
        let task =
            async move {
                loop {
                    let slot = match &slots {
                        Some(slots) => tokio::select! {
                            _ = stop.cancelled() => return,
                            slot = slots.clone().acquire_owned() => slot.ok(),
                        },
                        None => None,
                    };
                    let accepted = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tx.closed() => return,
                        accepted = self.accept(options.tcp_keepalive) => accepted,
                    };
                    let (socket, remote_addr) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: wait rather than spin.
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let info = ConnInfo {
                        remote_addr,
                        peer_certificates: None,
                    };
                    let Some(tls) = &options.tls else {
                        let conn = Conn {
                            io: Either::Left(socket),
                            info,
                            _slot: slot,
                        };
                        if tx.send(Ok(conn)).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket))
                                .await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(?remote_addr, "TLS handshake refused: {e}");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(?remote_addr, "TLS handshake timed out");
                                    return;
                                }
                            };
                        let peer_certificates = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| Arc::from(c.to_vec()));
                        let conn = Conn {
                            io: Either::Right(Box::new(stream)),
                            info: ConnInfo {
                                remote_addr,
                                peer_certificates,
                            },
                            _slot: slot,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    });
                }
            };
        tokio::spawn(tracing::Instrument::instrument(task, span));
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    async fn accept(
        &self,
        keepalive: Option<Duration>,
    ) -> io::Result<(Socket, Option<SocketAddr>)> {
        match self {
            Self::Tcp(l) => {
                let (tcp, addr) = l.accept().await?;
                // Small responses are written as several HTTP/2 frames; without
                // TCP_NODELAY, Nagle holds the last one until the client's delayed ACK.
                tcp.set_nodelay(true)?;
                if let Some(idle) = keepalive {
                    socket2::SockRef::from(&tcp)
                        .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(idle))?;
                }
                Ok((Either::Left(tcp), Some(addr)))
            }
            Self::Unix(l) => {
                let (unix, _) = l.accept().await?;
                Ok((Either::Right(unix), None))
            }
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

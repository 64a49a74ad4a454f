//! Receivers that take UDP receive offload, for the load client of section 6.
//!
//! On loopback the sender's CPU time includes the delivery to the receiving
//! socket: the loopback device runs the receive path in the sending thread's
//! softirq. A GSO send of 16 datagrams to a socket without `UDP_GRO` is cut
//! back into 16 datagrams there and each is queued on its own; to a socket
//! with `UDP_GRO` on, the kernel queues it whole, once (the way a viewer's
//! host would, with its NIC's GRO, on another machine). So with these
//! receivers less of the viewers' work is billed to the relay, for a relay
//! that sends in GSO runs (ours on one port). A relay sending one `sendto`
//! per datagram (Janus, webrtc-rs's own path) gives the kernel nothing to
//! coalesce on loopback and pays the same either way.
//!
//! webrtc-rs's ICE agent takes a [`UDPMux`] and asks it for one connection
//! per peer (its local ufrag), whose port becomes the peer's host candidate.
//! [`GroMux`] binds a socket per peer with GRO on and hands the agent the
//! coalesced datagrams one at a time, asking the kernel for no control
//! message but the segment size.
//!
//! The load client costs more this way than with webrtc-rs's own sockets,
//! about a fifth more CPU at 100 viewers of either relay (bench cores in
//! docs/benchmarks.md, "Receivers that take GSO runs whole").

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use webrtc::ice::udp_mux::UDPMux;
use webrtc::util::{Conn, Error};

/// The most a coalesced read can hold (UDP's 64 KB limit).
const GRO_BUFFER: usize = 64 * 1024;

/// A socket per peer, each with UDP receive offload on.
#[derive(Default)]
pub struct GroMux {
    conns: Mutex<HashMap<String, Arc<GroConn>>>,
}

impl GroMux {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }
}

#[async_trait::async_trait]
impl UDPMux for GroMux {
    async fn close(&self) -> Result<(), Error> {
        let conns: Vec<_> = lock(&self.conns).drain().map(|(_, c)| c).collect();
        for c in conns {
            c.closed.cancel();
        }
        Ok(())
    }

    async fn get_conn(self: Arc<Self>, ufrag: &str) -> Result<Arc<dyn Conn + Send + Sync>, Error> {
        if let Some(c) = lock(&self.conns).get(ufrag) {
            return Ok(c.clone());
        }
        let conn = Arc::new(GroConn::bind()?);
        lock(&self.conns).insert(ufrag.to_owned(), conn.clone());
        Ok(conn)
    }

    async fn remove_conn_by_ufrag(&self, ufrag: &str) {
        if let Some(c) = lock(&self.conns).remove(ufrag) {
            c.closed.cancel();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One peer's socket and what it has read but not yet handed out.
struct GroConn {
    socket: UdpSocket,
    read: tokio::sync::Mutex<Coalesced>,
    closed: CancellationToken,
}

/// Datagrams read together: `buf[at..len]` is what is left, `stride` apart.
struct Coalesced {
    buf: Box<[u8]>,
    at: usize,
    len: usize,
    stride: usize,
    from: SocketAddr,
}

impl Coalesced {
    /// Copies the next datagram into `out`, if one is left.
    fn next(&mut self, out: &mut [u8]) -> Option<(usize, SocketAddr)> {
        if self.at >= self.len {
            return None;
        }
        let end = (self.at + self.stride.max(1)).min(self.len);
        let n = (end - self.at).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at = end;
        Some((n, self.from))
    }
}

impl GroConn {
    fn bind() -> Result<Self, Error> {
        let std = std::net::UdpSocket::bind("0.0.0.0:0")?;
        std.set_nonblocking(true)?;
        socket::setsockopt(&std, sockopt::UdpGroSegment, &true).map_err(std::io::Error::from)?;
        Ok(Self {
            socket: UdpSocket::from_std(std)?,
            read: tokio::sync::Mutex::new(Coalesced {
                buf: vec![0; GRO_BUFFER].into_boxed_slice(),
                at: 0,
                len: 0,
                stride: 0,
                from: SocketAddr::from(([0, 0, 0, 0], 0)),
            }),
            closed: CancellationToken::new(),
        })
    }

    /// Reads what is queued into `c` without waiting: `Ok(false)` when
    /// nothing is.
    fn try_read(&self, c: &mut Coalesced) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        let mut cmsgs = nix::cmsg_space!(i32);
        let got = self.socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut c.buf)];
            let msg = socket::recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut cmsgs),
                MsgFlags::empty(),
            )?;
            // Without the message the read was one datagram.
            let stride = msg
                .cmsgs()?
                .find_map(|m| match m {
                    ControlMessageOwned::UdpGroSegments(size) => usize::try_from(size).ok(),
                    _ => None,
                })
                .unwrap_or(msg.bytes);
            let from = msg
                .address
                .and_then(|a| a.as_sockaddr_in().map(|v4| SocketAddr::V4((*v4).into())));
            Ok((msg.bytes, stride, from))
        });
        match got {
            Ok((len, stride, Some(from))) => {
                (c.at, c.len, c.stride, c.from) = (0, len, stride, from);
                Ok(true)
            }
            // Not from an IPv4 peer (the socket is IPv4): skipped.
            Ok((_, _, None)) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Conn for GroConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc::util::Result<()> {
        Err(Error::Other("GroConn is not connected".into()))
    }

    async fn recv(&self, _buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Err(Error::Other("GroConn reads with recv_from".into()))
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        let mut c = self.read.lock().await;
        loop {
            if let Some(got) = c.next(buf) {
                return Ok(got);
            }
            if self.closed.is_cancelled() {
                return Err(Error::ErrClosedListener);
            }
            // Only an empty socket costs a wait (and the close watch with it).
            if !self.try_read(&mut c)? {
                tokio::select! {
                    () = self.closed.cancelled() => return Err(Error::ErrClosedListener),
                    r = self.socket.readable() => r?,
                }
            }
        }
    }

    async fn send(&self, _buf: &[u8]) -> webrtc::util::Result<usize> {
        Err(Error::Other("GroConn sends with send_to".into()))
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.closed.cancel();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesced_datagrams_come_out_one_at_a_time_the_last_one_short() {
        let from = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut c = Coalesced {
            buf: (0..10u8).collect::<Vec<_>>().into_boxed_slice(),
            at: 0,
            len: 10,
            stride: 4,
            from,
        };
        let mut out = [0u8; 16];
        assert_eq!(c.next(&mut out), Some((4, from)));
        assert_eq!(out[..4], [0, 1, 2, 3]);
        assert_eq!(c.next(&mut out), Some((4, from)));
        assert_eq!(out[..4], [4, 5, 6, 7]);
        assert_eq!(c.next(&mut out), Some((2, from)));
        assert_eq!(out[..2], [8, 9]);
        assert_eq!(c.next(&mut out), None);
    }
}

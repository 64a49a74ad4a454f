//! The port as webrtc-rs's `Conn`, for its UDP mux.

use std::io;
use std::net::SocketAddr;

use webrtc::util::Conn;

use super::queue::*;

impl BatchedUdp {
    /// Waits until the socket is readable and runs `read` on it, again
    /// after each `WouldBlock`.
    async fn read<T>(
        &self,
        mut read: impl FnMut(&std::net::UdpSocket) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            let mut ready = self.shared.socket.readable().await?;
            if let Ok(result) = ready.try_io(|s| read(s.get_ref())) {
                return result;
            }
        }
    }
}

#[async_trait::async_trait]
impl Conn for BatchedUdp {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.shared.socket.get_ref().connect(addr)?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.read(|s| s.recv(buf)).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        Ok(self.read(|s| s.recv_from(buf)).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        // Unused by the mux (it sends with `send_to`); never waits.
        Ok(self.shared.socket.get_ref().send(buf)?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        // A dropped packet is a lost datagram, not an error of the peer
        // connection (UDP gives no delivery promise either way).
        self.push(buf, target);
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.shared.socket.get_ref().local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.shared.close();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

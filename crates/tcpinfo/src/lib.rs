//! What the kernel knows about a TCP connection: its smoothed round-trip time and how many bytes its
//! congestion window lets it send now (Linux `TCP_INFO`). A server uses it to size its first write to what
//! TCP can send in one flight, and to know what a round trip it saves is worth.
//!
//! The workspace's one `unsafe` block lives here, in a crate of its own, so that every other crate forbids
//! unsafe code. Other systems get [`std::io::ErrorKind::Unsupported`].
//!
//! Internal plumbing of the batchgate crates, published only because they depend on it: no stability promise.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// A connection's state, as far as sending goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// The smoothed round-trip time (on a fresh connection: the handshake's).
    pub rtt: Duration,
    /// The largest segment the connection sends.
    pub mss: u32,
    /// Bytes the congestion window lets the connection send now: the window less what is sent and not yet
    /// acknowledged. On a fresh connection, the initial window (10 segments by default).
    pub sendable: u32,
}

/// Reads the [`TcpInfo`] of the socket `fd`. The descriptor is raw, not borrowed, for callers that keep the socket
/// open by other means than a borrow (a connection owned by a server library). A closed or reused descriptor
/// gives an error or another socket's figures, never undefined behaviour: the kernel checks the descriptor, and
/// the buffer's size.
pub fn read(fd: RawFd) -> io::Result<TcpInfo> {
    sys::read(fd)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use super::*;

    pub(super) fn read(fd: RawFd) -> io::Result<TcpInfo> {
        let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` is a writable buffer of `len` bytes that lives across the call; the kernel writes at most
        // `len` bytes into it and stores the length it wrote in `len`. A bad descriptor is an error, not UB.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the buffer was zeroed before the call, and every field of `tcp_info` is an integer, so any
        // prefix the kernel filled (older kernels fill less) leaves a valid value.
        let info = unsafe { info.assume_init() };
        let mss = info.tcpi_snd_mss;
        let in_flight = info
            .tcpi_unacked
            .saturating_sub(info.tcpi_sacked + info.tcpi_lost)
            + info.tcpi_retrans;
        Ok(TcpInfo {
            rtt: Duration::from_micros(info.tcpi_rtt.into()),
            mss,
            sendable: info
                .tcpi_snd_cwnd
                .saturating_sub(in_flight)
                .saturating_mul(mss),
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use super::*;

    pub(super) fn read(_fd: RawFd) -> io::Result<TcpInfo> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO is read on Linux only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_fresh_connection_has_its_initial_window_and_a_round_trip() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let info = read(server.as_raw_fd()).unwrap();
        assert!(info.mss > 0, "{info:?}");
        // The initial window is at least the 2-4 segments of RFC 3390 (Linux: 10, RFC 6928).
        assert!(info.sendable >= 2 * info.mss, "{info:?}");
        assert!(
            info.rtt > Duration::ZERO && info.rtt < Duration::from_secs(1),
            "{info:?}"
        );
        server.write_all(b"x").unwrap();
        let mut byte = [0];
        (&client).read_exact(&mut byte).unwrap();
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_an_error() {
        let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(read(file.as_raw_fd()).is_err());
    }
}

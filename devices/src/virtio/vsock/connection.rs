//! One vsock connection: a guest stream socket joined to a host Unix stream, the state of the
//! handshake and of each direction's shutdown, and the credit that bounds what either side
//! may have in flight.
//!
//! Credit, as the virtio spec has it: every packet to the guest carries `buf_alloc` (what this
//! side buffers for the guest's data, [`CONN_BUF`]) and `fwd_cnt` (how much of it went on to
//! the host socket); the guest may have at most `buf_alloc` bytes unforwarded. What the host
//! socket does not take at once waits in the connection's buffer, which is thus at most
//! [`CONN_BUF`]; a guest that sends more than its credit loses the connection, never grows the
//! VMM. The other way, the host socket is read only as far as the guest's own credit allows
//! and straight into the guest's receive buffer, so a slow guest leaves the data in the host
//! socket, where it pushes back on the sender.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::packet::{op, Header, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::VsockStats;

/// The guest's data one connection buffers: the `buf_alloc` it advertises.
pub const CONN_BUF: u32 = 64 * 1024;
/// Forwarded bytes after which the guest is told its new credit unasked: half the buffer, so a
/// guest streaming to a host that keeps up never waits for credit.
const CREDIT_UPDATE_AFTER: u32 = CONN_BUF / 2;
/// How long a connection waits for the guest's answer to a request or to a shutdown.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
#[cfg(test)]
pub const ANSWER_TIMEOUT_FOR_TESTS: Duration = ANSWER_TIMEOUT;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected: a request to the guest is queued or sent.
    LocalInit,
    /// The guest requested it and the host socket accepted: the response is queued.
    PeerInit,
    /// Both ends are connected.
    Established,
    /// Torn down: a reset for the guest is queued, and the connection goes once it is sent.
    Killed,
}

/// Packets a connection has for the guest (a set of bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pending(u8);

impl Pending {
    const RST: u8 = 1;
    const RESPONSE: u8 = 2;
    const REQUEST: u8 = 4;
    const RW: u8 = 8;
    const CREDIT_UPDATE: u8 = 16;
    const CREDIT_REQUEST: u8 = 32;

    fn insert(&mut self, bit: u8) {
        self.0 |= bit;
    }
    fn take(&mut self, bit: u8) -> bool {
        let had = self.0 & bit != 0;
        self.0 &= !bit;
        had
    }
    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// What a connection wants to hear about its host stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

/// One connection, keyed in the muxer by (`local_port`, `peer_port`).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: ConnState,
    pending: Pending,
    /// Guest data the host socket has not taken yet; at most `CONN_BUF`.
    tx_buf: VecDeque<u8>,
    /// Guest data forwarded to the host socket (wrapping, as the header field).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_told: Wrapping<u32>,
    /// The guest's receive buffer and how much of it it consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Data sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// The host stream reached end of file: a shutdown went to the guest.
    host_eof: bool,
    /// The host stream hung up entirely: it takes nothing more either.
    host_hup: bool,
    /// The guest said it sends no more; the host stream's write side is shut once the buffer
    /// drained.
    guest_send_off: bool,
    write_shut: bool,
    /// The guest said it receives no more.
    guest_recv_off: bool,
    /// When the guest must have answered a request or a full shutdown.
    expiry: Option<Instant>,
}

impl Connection {
    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state: ConnState::LocalInit,
            pending: Pending::default(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            host_eof: false,
            host_hup: false,
            guest_send_off: false,
            write_shut: false,
            guest_recv_off: false,
            expiry: None,
        }
    }

    /// A connection the host opened (after its `CONNECT` line): a request for the guest.
    pub fn new_local(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Self::new(stream, guest_cid, local_port, peer_port);
        conn.pending.insert(Pending::REQUEST);
        conn
    }

    /// A connection the guest requested with `request`, whose host socket accepted.
    pub fn new_peer(stream: UnixStream, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Self::new(stream, guest_cid, request.dst_port, request.src_port);
        conn.state = ConnState::PeerInit;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        conn.pending.insert(Pending::RESPONSE);
        conn
    }

    /// The handshake state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// The host side's port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        self.pending.0 != 0
    }

    /// When the guest's answer is due, if one is awaited.
    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    /// Tears the connection down: the guest gets a reset, the host stream is closed once it is
    /// sent, and buffered data is dropped.
    pub fn kill(&mut self) {
        self.state = ConnState::Killed;
        self.pending = Pending(Pending::RST);
        self.tx_buf = VecDeque::new();
        self.expiry = None;
    }

    /// Kills the connection if the guest's answer is overdue at `now`; returns whether it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        match self.expiry {
            Some(due) if due <= now && self.state != ConnState::Killed => {
                self.kill();
                true
            }
            _ => false,
        }
    }

    /// What the guest may still receive.
    fn peer_credit(&self) -> u32 {
        (Wrapping(self.peer_buf_alloc) - (self.rx_cnt - self.peer_fwd_cnt)).0
    }

    fn fill_header(&self, op: u16, len: u32, flags: u32) -> Header {
        Header {
            src_cid: super::packet::HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The next packet for the guest, its data read into `data` (at most `data.len()` bytes);
    /// `None` when the connection has nothing to send after all.
    pub fn recv_pkt(&mut self, data: &mut [u8], stats: &VsockStats) -> Option<Header> {
        let header = self.next_rx(data, stats)?;
        self.fwd_cnt_told = self.fwd_cnt;
        stats.rx_packet();
        Some(header)
    }

    fn next_rx(&mut self, data: &mut [u8], stats: &VsockStats) -> Option<Header> {
        if self.pending.take(Pending::RST) {
            self.pending = Pending::default();
            return Some(self.fill_header(op::RST, 0, 0));
        }
        if self.pending.take(Pending::RESPONSE) {
            self.state = ConnState::Established;
            return Some(self.fill_header(op::RESPONSE, 0, 0));
        }
        if self.pending.take(Pending::REQUEST) {
            self.expiry = Some(Instant::now() + ANSWER_TIMEOUT);
            return Some(self.fill_header(op::REQUEST, 0, 0));
        }
        if self.pending.take(Pending::RW) {
            if let Some(header) = self.read_host(data, stats) {
                return Some(header);
            }
        }
        if self.pending.take(Pending::CREDIT_REQUEST) {
            return Some(self.fill_header(op::CREDIT_REQUEST, 0, 0));
        }
        if self.pending.take(Pending::CREDIT_UPDATE) {
            return Some(self.fill_header(op::CREDIT_UPDATE, 0, 0));
        }
        None
    }

    /// Reads what the host sent, as far as the guest's credit goes.
    fn read_host(&mut self, data: &mut [u8], stats: &VsockStats) -> Option<Header> {
        if self.state != ConnState::Established || self.host_eof || self.guest_recv_off {
            return None;
        }
        let credit = usize::try_from(self.peer_credit()).unwrap_or(usize::MAX);
        if credit == 0 {
            self.pending.insert(Pending::CREDIT_REQUEST);
            return None;
        }
        let room = data.len().min(credit);
        let buf = data.get_mut(..room)?;
        match self.stream.read(buf) {
            Ok(0) => {
                self.host_eof = true;
                let mut flags = SHUTDOWN_SEND;
                if self.guest_send_off {
                    // Both directions are done.
                    self.finish();
                } else if self.host_hup || hung_up(&self.stream) {
                    // The host closed, not just its write side: it takes nothing more either,
                    // and the guest should answer with a reset. (Once the guest shut its own
                    // direction, the socket reports a hang-up for that alone.)
                    flags |= SHUTDOWN_RCV;
                    self.expiry = Some(Instant::now() + ANSWER_TIMEOUT);
                }
                Some(self.fill_header(op::SHUTDOWN, 0, flags))
            }
            Ok(n) => {
                // At most one packet, far below 4 GiB.
                let len = u32::try_from(n).unwrap_or(u32::MAX);
                self.rx_cnt += Wrapping(len);
                stats.rx_bytes(n);
                // More may be waiting: the stream is looked at again after this packet.
                self.pending.insert(Pending::RW);
                Some(self.fill_header(op::RW, len, 0))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                None
            }
            Err(e) => {
                stats.rx_read_failed();
                log::debug!("vsock: reading host port {} failed: {e}", self.local_port);
                self.kill();
                Some(self.fill_header(op::RST, 0, 0))
            }
        }
    }

    /// Both directions are done: a reset closes the guest's side too.
    fn finish(&mut self) {
        self.state = ConnState::Killed;
        self.pending.insert(Pending::RST);
    }

    /// A packet from the guest for this connection.
    pub fn send_pkt(&mut self, header: &Header, data: &[u8], stats: &VsockStats) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
        stats.tx_packet();
        match (self.state, header.op) {
            (ConnState::Established, op::RW) => self.guest_data(data, stats),
            (ConnState::LocalInit, op::RESPONSE) => {
                self.expiry = None;
                self.state = ConnState::Established;
                self.ack_host();
            }
            (ConnState::Established, op::SHUTDOWN) => self.guest_shutdown(header.flags),
            (ConnState::Established | ConnState::PeerInit, op::CREDIT_REQUEST) => {
                self.pending.insert(Pending::CREDIT_UPDATE);
            }
            // The new credit is taken from every packet above; reading may go on.
            (ConnState::Established | ConnState::PeerInit, op::CREDIT_UPDATE) => {}
            _ => log::debug!(
                "vsock: dropped op {} for port {} in state {:?}",
                header.op,
                self.local_port,
                self.state
            ),
        }
    }

    /// Tells the host the connection it asked for is open: `OK <host port>\n`, before any
    /// data, as Firecracker does.
    fn ack_host(&mut self) {
        let line = format!("OK {}\n", self.local_port);
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            // A fresh socket takes a line; one that does not is broken.
            Ok(_) | Err(_) => {
                log::debug!("vsock: could not acknowledge host port {}", self.local_port);
                self.kill();
            }
        }
    }

    fn guest_data(&mut self, data: &[u8], stats: &VsockStats) {
        if self.guest_send_off || data.is_empty() {
            return;
        }
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.forwarded(n, stats);
                    rest = rest.get(n..).unwrap_or_default();
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    stats.tx_write_failed();
                    log::debug!("vsock: writing host port {} failed: {e}", self.local_port);
                    self.kill();
                    return;
                }
            }
        }
        if rest.is_empty() {
            return;
        }
        if self.tx_buf.len().saturating_add(rest.len()) > CONN_BUF as usize {
            // Only a guest that ignores its credit gets here.
            log::debug!(
                "vsock: the guest overran its credit on port {}",
                self.local_port
            );
            stats.tx_write_failed();
            self.kill();
            return;
        }
        self.tx_buf.extend(rest);
    }

    fn forwarded(&mut self, n: usize, stats: &VsockStats) {
        // Bounded by one packet or the buffer, far below 4 GiB.
        self.fwd_cnt += Wrapping(u32::try_from(n).unwrap_or(u32::MAX));
        stats.tx_bytes(n);
        if (self.fwd_cnt - self.fwd_cnt_told).0 >= CREDIT_UPDATE_AFTER {
            self.pending.insert(Pending::CREDIT_UPDATE);
        }
    }

    fn guest_shutdown(&mut self, flags: u32) {
        if flags & SHUTDOWN_RCV != 0 && !self.guest_recv_off {
            self.guest_recv_off = true;
            // The host's writes now fail, as they would on a socket whose reader is gone.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        if flags & SHUTDOWN_SEND != 0 {
            self.guest_send_off = true;
        }
        self.after_guest_shutdown();
    }

    /// Once the guest sends no more and its data reached the host: shuts the host stream's
    /// write side, and ends the connection if nothing is left either way.
    fn after_guest_shutdown(&mut self) {
        if !self.guest_send_off || !self.tx_buf.is_empty() || self.state == ConnState::Killed {
            return;
        }
        if !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.guest_recv_off || self.host_eof {
            self.finish();
        }
    }

    /// The host stream is ready: readable (or hung up), writable, or both.
    pub fn notify(&mut self, readable: bool, writable: bool, hup: bool, stats: &VsockStats) {
        if hup {
            self.host_hup = true;
        }
        if readable || hup {
            self.pending.insert(Pending::RW);
        }
        if writable && !self.tx_buf.is_empty() {
            self.flush(stats);
        }
    }

    fn flush(&mut self, stats: &VsockStats) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n, stats);
                }
                Err(e)
                    if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted =>
                {
                    break
                }
                Err(e) => {
                    stats.tx_flush_failed();
                    log::debug!("vsock: flushing host port {} failed: {e}", self.local_port);
                    self.kill();
                    return;
                }
            }
        }
        if self.tx_buf.is_empty() {
            // Release the memory a slow reader made it hold.
            self.tx_buf = VecDeque::new();
            self.after_guest_shutdown();
        }
    }

    /// The host stream events the connection waits for now.
    pub fn interest(&self) -> Interest {
        let reading = self.state == ConnState::Established
            && !self.host_eof
            && !self.guest_recv_off
            && !self.pending.has(Pending::RW)
            && self.peer_credit() > 0;
        Interest {
            readable: reading,
            writable: !self.tx_buf.is_empty(),
        }
    }
}

/// Whether the host closed its socket, not just its write side: it then takes nothing more.
/// Asked when end of file is read, since the stream may not be watched then.
fn hung_up(stream: &UnixStream) -> bool {
    let mut pollfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the call only; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready > 0 && pollfd.revents & libc::POLLHUP != 0
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

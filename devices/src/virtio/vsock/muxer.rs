//! The host side of the vsock device, Firecracker's hybrid vsock: guest connections become
//! host Unix stream connections, and the reverse.
//!
//! - The host connects to the Unix socket at `uds_path` and sends `CONNECT <port>\n`; the
//!   guest is asked for a connection to that port, and once it accepts, the host reads
//!   `OK <host port>\n` and the stream starts. A line that is not a `CONNECT` closes that host
//!   connection only; a guest that refuses closes it too.
//! - A guest connection to host port P connects to the Unix socket `<uds_path>_<P>`; if nobody
//!   listens there (or its backlog is full: the VMM never waits), the guest gets a reset.
//!
//! Every host socket is non-blocking and watched through one epoll instance of the muxer's
//! own, whose fd the device hands to the event loop, with a timer for the answers the guest
//! owes. A stream whose connection waits for nothing is out of that epoll set: a hung-up
//! socket reports itself whatever it was registered for, and would otherwise keep the event
//! loop spinning. Connections (and host connections still sending their `CONNECT` line) are
//! at most [`MAX_CONNECTIONS`], the resets queued for unknown connections at most
//! [`MAX_RESETS`]; with each connection's buffer bounded (see `connection`), nothing a guest
//! does grows the VMM without bound.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection, Interest};
use super::packet::{op, Header, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::VsockStats;

/// Connections at once, counting host connections that have not sent their `CONNECT` yet.
pub const MAX_CONNECTIONS: usize = 1024;
/// Resets for packets that belong to no connection, waiting for receive buffers.
pub const MAX_RESETS: usize = 256;
/// The longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Ports the host side of host-initiated connections gets: from 2^30 up, as in Firecracker.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// epoll events handled per wake-up; more wait for the next one (the set is level-triggered).
const EVENTS_PER_WAKE: usize = 64;

/// Why the muxer could not start.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The host socket could not be bound.
    #[error("Failed to bind the vsock socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    /// The epoll instance or the timer could not be created or set up.
    #[error("Failed to set up the vsock event set: {0}")]
    Epoll(io::Error),
}

/// A connection's key: the host side's port and the guest side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    local_port: u32,
    peer_port: u32,
}

/// A host connection that has not finished its `CONNECT` line.
#[derive(Debug)]
struct HostRequest {
    stream: UnixStream,
    line: Vec<u8>,
}

/// What an fd in the muxer's epoll set belongs to.
#[derive(Debug)]
enum Watched {
    Listener,
    Timer,
    Request(HostRequest),
    /// A connection's stream, with the events it is registered for.
    Conn(Key, Interest),
}

/// The vsock backend: the host socket, the connections, and the packets queued for the guest.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_due: Option<Instant>,
    watched: HashMap<RawFd, Watched>,
    conns: HashMap<Key, Connection>,
    /// Connections with packets for the guest, each once, served in turn.
    rxq: VecDeque<Key>,
    queued: HashSet<Key>,
    /// Resets for packets that belong to no connection: (host port, guest port).
    resets: VecDeque<(u32, u32)>,
    local_ports: HashSet<u32>,
    last_local_port: u32,
    stats: Arc<VsockStats>,
}

fn interest_events(interest: Interest) -> EventSet {
    let mut events = EventSet::empty();
    if interest.readable {
        events |= EventSet::IN;
    }
    if interest.writable {
        events |= EventSet::OUT;
    }
    events
}

fn fd_data(fd: RawFd) -> u64 {
    // fds are never negative.
    u64::try_from(fd).unwrap_or(0)
}

/// Connects to the Unix stream socket at `path` without waiting: a full backlog is an error
/// (`EAGAIN`), as is nobody listening.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data, for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a plain syscall with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created here, owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call, and `len` (below 110)
    // covers only its initialised family and path.
    let rc = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// The port of a `CONNECT <port>` line (the word in any case, as Firecracker takes it).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    let verb = words.next()?;
    if !verb.eq_ignore_ascii_case("connect") {
        return None;
    }
    let port = words.next()?.parse().ok()?;
    words.next().is_none().then_some(port)
}

impl Muxer {
    /// Binds the host socket at `uds_path` for the guest with `guest_cid`.
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        stats: Arc<VsockStats>,
    ) -> Result<Muxer, MuxerError> {
        let bind = || -> io::Result<UnixListener> {
            let listener = UnixListener::bind(uds_path)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        let listener = bind().map_err(|source| MuxerError::Bind {
            path: uds_path.to_path_buf(),
            source,
        })?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Epoll(e.into()))?;
        let mut muxer = Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_due: None,
            watched: HashMap::new(),
            conns: HashMap::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            resets: VecDeque::new(),
            local_ports: HashSet::new(),
            last_local_port: LOCAL_PORT_BASE - 1,
            stats,
        };
        let listener_fd = muxer.listener.as_raw_fd();
        muxer
            .watch(listener_fd, EventSet::IN, Watched::Listener)
            .map_err(MuxerError::Epoll)?;
        let timer_fd = muxer.timer.as_raw_fd();
        muxer
            .watch(timer_fd, EventSet::IN, Watched::Timer)
            .map_err(MuxerError::Epoll)?;
        Ok(muxer)
    }

    /// The host socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Whether a packet waits for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    /// How many connections there are (host connections still sending `CONNECT` included).
    pub fn connections(&self) -> usize {
        self.conns.len() + self.requests()
    }

    fn requests(&self) -> usize {
        self.watched
            .values()
            .filter(|w| matches!(w, Watched::Request(_)))
            .count()
    }

    fn watch(&mut self, fd: RawFd, events: EventSet, what: Watched) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, fd_data(fd)),
        )?;
        self.watched.insert(fd, what);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) -> Option<Watched> {
        let what = self.watched.remove(&fd)?;
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            log::debug!("vsock: failed to stop watching fd {fd}: {e}");
        }
        Some(what)
    }

    /// Drops every connection, as a driver reset does; the host socket keeps listening.
    pub fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let requests: Vec<RawFd> = self
            .watched
            .iter()
            .filter(|(_, w)| matches!(w, Watched::Request(_)))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in requests {
            self.unwatch(fd);
        }
        self.rxq.clear();
        self.queued.clear();
        self.resets.clear();
        self.local_ports.clear();
        self.last_local_port = LOCAL_PORT_BASE - 1;
    }

    /// Handles what the epoll set reports: new host connections, `CONNECT` lines, streams
    /// ready for reading or writing, and overdue answers.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_WAKE];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(e) => {
                self.stats.muxer_event_failed();
                log::warn!("vsock: failed to read the muxer's events: {e}");
                return;
            }
        };
        for event in events.iter().take(count) {
            let fd = RawFd::try_from(event.data()).unwrap_or(-1);
            let set = event.event_set();
            self.handle(fd, set);
        }
    }

    fn handle(&mut self, fd: RawFd, set: EventSet) {
        match self.watched.get(&fd) {
            Some(Watched::Listener) => self.accept(),
            Some(Watched::Timer) => self.expire(),
            Some(Watched::Request(_)) => self.read_request(fd),
            Some(Watched::Conn(key, _)) => {
                let key = *key;
                let readable = set.contains(EventSet::IN);
                let writable = set.contains(EventSet::OUT);
                let hup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
                self.with_conn(key, |conn, stats| {
                    conn.notify(readable, writable, hup, stats)
                });
            }
            None => self.stats.muxer_event_failed(),
        }
    }

    /// Accepts every waiting host connection; beyond the limit, each is closed at once.
    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.stats.muxer_event_failed();
                    log::warn!("vsock: failed to accept a host connection: {e}");
                    return;
                }
            };
            if self.connections() >= MAX_CONNECTIONS {
                log::warn!("vsock: {MAX_CONNECTIONS} connections open; refused a host connection");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("vsock: failed to set up a host connection: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            let request = HostRequest {
                stream,
                line: Vec::with_capacity(MAX_CONNECT_LINE),
            };
            if let Err(e) = self.watch(fd, EventSet::IN, Watched::Request(request)) {
                log::warn!("vsock: failed to watch a host connection: {e}");
            }
        }
    }

    /// Reads what came of a host connection's `CONNECT` line, byte by byte so that nothing
    /// after the line is taken from the stream; a complete line opens the connection.
    fn read_request(&mut self, fd: RawFd) {
        let Some(Watched::Request(request)) = self.watched.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let done = loop {
            match request.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&request.line)),
                Ok(_) if request.line.len() >= MAX_CONNECT_LINE => break Err(()),
                Ok(_) => request.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(Watched::Request(request)) = self.unwatch(fd) else {
            return;
        };
        match done {
            Ok(Some(port)) => self.open_local(request.stream, port),
            Ok(None) | Err(()) => {
                log::debug!("vsock: closed a host connection without a valid CONNECT line")
            }
        }
    }

    fn allocate_local_port(&mut self) -> u32 {
        // At most MAX_CONNECTIONS ports are taken of the 2^30 in the range.
        loop {
            self.last_local_port =
                (self.last_local_port.wrapping_add(1) & !(1 << 31)) | LOCAL_PORT_BASE;
            if self.local_ports.insert(self.last_local_port) {
                return self.last_local_port;
            }
        }
    }

    fn open_local(&mut self, stream: UnixStream, peer_port: u32) {
        let local_port = self.allocate_local_port();
        let key = Key {
            local_port,
            peer_port,
        };
        let conn = Connection::new_local(stream, self.guest_cid, local_port, peer_port);
        self.add(key, conn);
    }

    fn add(&mut self, key: Key, conn: Connection) {
        self.conns.insert(key, conn);
        self.stats.conn_added();
        self.with_conn(key, |_, _| {});
    }

    fn remove(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            self.unwatch(conn.as_raw_fd());
            self.stats.conn_removed();
        }
        self.local_ports.remove(&key.local_port);
    }

    /// Runs `f` on the connection, then brings the rest in line with it: the receive queue,
    /// the timer, and the events its stream is watched for.
    fn with_conn(&mut self, key: Key, f: impl FnOnce(&mut Connection, &VsockStats)) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let was_killed = conn.state() == ConnState::Killed;
        f(conn, &self.stats);
        if !was_killed && conn.state() == ConnState::Killed {
            self.stats.conn_killed();
        }
        let pending = conn.has_pending_rx();
        let expiry = conn.expiry();
        let fd = conn.as_raw_fd();
        let interest = conn.interest();
        if pending && self.queued.insert(key) {
            self.rxq.push_back(key);
        }
        if let Some(due) = expiry {
            self.arm_timer(due);
        }
        self.sync_watch(key, fd, interest);
    }

    /// Registers the stream for what the connection waits for, or takes it out of the set.
    fn sync_watch(&mut self, key: Key, fd: RawFd, interest: Interest) {
        let events = interest_events(interest);
        let current = match self.watched.get(&fd) {
            Some(Watched::Conn(_, current)) => Some(*current),
            _ => None,
        };
        if current == Some(interest) {
            return;
        }
        let result = match (current, events.is_empty()) {
            (None, true) => return,
            (Some(_), true) => {
                self.unwatch(fd);
                return;
            }
            (None, false) => self.watch(fd, events, Watched::Conn(key, interest)),
            (Some(_), false) => self
                .epoll
                .ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(events, fd_data(fd)),
                )
                .map(|()| {
                    self.watched.insert(fd, Watched::Conn(key, interest));
                }),
        };
        if let Err(e) = result {
            self.stats.muxer_event_failed();
            log::warn!(
                "vsock: failed to watch the stream of host port {}: {e}",
                key.local_port
            );
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.kill();
                if self.queued.insert(key) {
                    self.rxq.push_back(key);
                }
            }
        }
    }

    fn arm_timer(&mut self, due: Instant) {
        if self.timer_due.is_some_and(|armed| armed <= due) {
            return;
        }
        let wait = due
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(wait, None) {
            Ok(()) => self.timer_due = Some(due),
            Err(e) => log::warn!("vsock: failed to arm the connection timer: {e}"),
        }
    }

    /// Kills the connections whose guest answer is overdue, and re-arms for the next one.
    fn expire(&mut self) {
        // Disarming resets the expiry count, so the fd stops reporting; unlike a read it
        // cannot block if the timer was re-armed since it fired.
        if let Err(e) = self.timer.clear() {
            log::warn!("vsock: failed to clear the connection timer: {e}");
        }
        self.timer_due = None;
        let now = Instant::now();
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.with_conn(key, |conn, _| {
                if conn.expire(now) {
                    log::debug!(
                        "vsock: the guest did not answer on host port {}",
                        conn.local_port()
                    );
                }
            });
        }
    }

    /// Queues a reset for a packet that belongs to no connection.
    fn reset_unknown(&mut self, local_port: u32, peer_port: u32) {
        if self.resets.len() >= MAX_RESETS {
            throttled_log::throttled_debug!("vsock: too many resets queued; dropped one");
            return;
        }
        self.resets.push_back((local_port, peer_port));
    }

    /// A packet from the guest.
    pub fn send_pkt(&mut self, header: &Header, data: &[u8]) {
        if header.dst_cid != HOST_CID || header.src_cid != self.guest_cid {
            throttled_log::throttled_debug!(
                "vsock: dropped a packet from CID {} to CID {}",
                header.src_cid,
                header.dst_cid
            );
            return;
        }
        if header.type_ != TYPE_STREAM {
            self.reset_unknown(header.dst_port, header.src_port);
            return;
        }
        let key = Key {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        if !self.conns.contains_key(&key) {
            match header.op {
                op::REQUEST => self.open_peer(header),
                // A reset needs no answer; anything else is for a connection that is gone.
                op::RST => {}
                _ => self.reset_unknown(header.dst_port, header.src_port),
            }
            return;
        }
        if header.op == op::RST {
            self.remove(key);
            return;
        }
        self.with_conn(key, |conn, stats| conn.send_pkt(header, data, stats));
    }

    /// The guest asks for host port `dst_port`: connects to `<uds_path>_<port>`.
    fn open_peer(&mut self, request: &Header) {
        if self.connections() >= MAX_CONNECTIONS {
            log::warn!("vsock: {MAX_CONNECTIONS} connections open; refused a guest connection");
            self.reset_unknown(request.dst_port, request.src_port);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", request.dst_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let key = Key {
                    local_port: request.dst_port,
                    peer_port: request.src_port,
                };
                let conn = Connection::new_peer(stream, self.guest_cid, request);
                self.add(key, conn);
            }
            Err(e) => {
                log::debug!(
                    "vsock: the guest's connection to port {} failed: {e}",
                    request.dst_port
                );
                self.reset_unknown(request.dst_port, request.src_port);
            }
        }
    }

    /// Writes the next packet for the guest into `buf` (header, then data; `buf` holds at least
    /// a header) and returns its length, or `None` if nothing waits.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<usize> {
        let (head, data) = buf.split_first_chunk_mut::<HDR_LEN>()?;
        if let Some((local_port, peer_port)) = self.resets.pop_front() {
            let header = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local_port,
                dst_port: peer_port,
                type_: TYPE_STREAM,
                op: op::RST,
                ..Header::default()
            };
            *head = header.to_bytes();
            self.stats.rx_packet();
            return Some(HDR_LEN);
        }
        while let Some(key) = self.rxq.pop_front() {
            self.queued.remove(&key);
            let mut packet = None;
            self.with_conn(key, |conn, stats| packet = conn.recv_pkt(data, stats));
            let Some(header) = packet else {
                continue;
            };
            *head = header.to_bytes();
            if header.op == op::RST {
                self.remove(key);
            }
            let len = usize::try_from(header.len).unwrap_or(0);
            return Some(HDR_LEN + len);
        }
        None
    }
}

impl AsRawFd for Muxer {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;

//! The muxer between packets and real Unix sockets: both handshakes, data both ways, credit,
//! shutdowns, and what a hostile guest or a confused host client gets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::super::connection::{ANSWER_TIMEOUT_FOR_TESTS, CONN_BUF};
use super::super::packet::{MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::*;
use crate::test_dir::scratch;

const CID: u64 = 3;
const FIRST_LOCAL: u32 = 1 << 30;

struct Host {
    dir: PathBuf,
    muxer: Muxer,
    stats: Arc<VsockStats>,
}

impl Host {
    fn new(name: &str) -> Host {
        let dir = scratch(&format!("vsock-{name}"));
        let stats = Arc::new(VsockStats::default());
        let muxer = Muxer::new(CID, &dir.join("v.sock"), stats.clone()).unwrap();
        Host { dir, muxer, stats }
    }

    /// Lets the muxer handle everything its sockets report, as the event loop would.
    fn settle(&mut self) {
        for _ in 0..4 {
            self.muxer.process_events();
        }
    }

    fn connect(&mut self, line: &[u8]) -> UnixStream {
        let mut host = UnixStream::connect(self.dir.join("v.sock")).unwrap();
        host.write_all(line).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        self.settle();
        host
    }

    fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut buf = vec![0u8; HDR_LEN + MAX_PKT_DATA];
        let len = self.muxer.recv_pkt(&mut buf)?;
        let header = Header::parse(buf[..HDR_LEN].try_into().unwrap());
        assert_eq!(usize::try_from(header.len).unwrap(), len - HDR_LEN);
        Some((header, buf[HDR_LEN..len].to_vec()))
    }

    fn recv_op(&mut self) -> Header {
        self.recv().expect("a packet for the guest").0
    }

    fn send(&mut self, header: Header, data: &[u8]) {
        let header = Header {
            len: data.len() as u32,
            ..header
        };
        self.muxer.send_pkt(&header, data);
    }

    /// A host-initiated connection to guest port 52, accepted by the guest at port 52.
    fn open_local(&mut self) -> (UnixStream, Header) {
        let mut host = self.connect(b"CONNECT 52\n");
        let request = self.recv_op();
        assert_eq!(request.op, op::REQUEST);
        let guest = guest_header(op::RESPONSE, 52, request.src_port);
        self.send(guest, &[]);
        let mut ok = vec![0u8; format!("OK {}\n", request.src_port).len()];
        host.read_exact(&mut ok).unwrap();
        assert_eq!(ok, format!("OK {}\n", request.src_port).as_bytes());
        (host, guest)
    }
}

/// A packet header as the guest writes it.
fn guest_header(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

#[test]
fn a_host_connection_is_forwarded_after_its_connect_line() {
    let mut host = Host::new("local");
    let mut stream = host.connect(b"CONNECT 52\n");
    let request = host.recv_op();
    assert_eq!(
        (
            request.op,
            request.src_cid,
            request.dst_cid,
            request.src_port,
            request.dst_port
        ),
        (op::REQUEST, HOST_CID, CID, FIRST_LOCAL, 52)
    );
    assert_eq!(request.buf_alloc, CONN_BUF);
    let guest = guest_header(op::RESPONSE, 52, FIRST_LOCAL);
    host.send(guest, &[]);
    let mut ok = [0u8; 14];
    stream.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");

    stream.write_all(b"ping").unwrap();
    host.settle();
    let (rw, data) = host.recv().unwrap();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"ping"[..]));
    host.send(
        Header {
            op: op::RW,
            ..guest
        },
        b"pong",
    );
    let mut pong = [0u8; 4];
    stream.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"pong");

    // The host closes: the guest is told neither direction goes on, and answers with a reset.
    drop(stream);
    host.settle();
    let shutdown = host.recv_op();
    assert_eq!(
        (shutdown.op, shutdown.flags),
        (op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
    );
    host.send(
        Header {
            op: op::RST,
            ..guest
        },
        &[],
    );
    assert_eq!(host.muxer.connections(), 0);
    assert!(host.recv().is_none());
    let stats: Vec<_> = host.stats.snapshot().into_iter().collect();
    assert!(stats.contains(&("conns_added", 1)));
    assert!(stats.contains(&("conns_removed", 1)));
    assert!(stats.contains(&("tx_bytes_count", 4)));
    assert!(stats.contains(&("rx_bytes_count", 4)));
}

#[test]
fn a_connect_line_may_arrive_in_pieces_and_data_after_it_is_kept() {
    let mut host = Host::new("pieces");
    let mut stream = host.connect(b"conn");
    assert!(host.recv().is_none());
    stream.write_all(b"ect 7\nearly data").unwrap();
    host.settle();
    let request = host.recv_op();
    assert_eq!((request.op, request.dst_port), (op::REQUEST, 7));
    host.send(guest_header(op::RESPONSE, 7, request.src_port), &[]);
    host.settle();
    let (rw, data) = host.recv().unwrap();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"early data"[..]));
}

#[test]
fn a_malformed_connect_line_closes_that_host_connection_only() {
    let mut host = Host::new("malformed");
    let (mut good, guest) = host.open_local();
    for line in [
        &b"HELLO 52\n"[..],
        b"CONNECT\n",
        b"CONNECT 52 53\n",
        b"CONNECT 99999999999\n",
        b"CONNECT -1\n",
        &[b'x'; 40],
    ] {
        let mut bad = host.connect(line);
        let mut buf = [0u8; 8];
        // Closed: end of file, or a reset when part of the line was left unread.
        match bad.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{line:?} was not refused: {other:?}"),
        }
    }
    // The guest heard of none of them, and the good connection carries on.
    assert!(host.recv().is_none());
    host.send(
        Header {
            op: op::RW,
            ..guest
        },
        b"still here",
    );
    let mut buf = [0u8; 10];
    good.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
    assert_eq!(host.muxer.connections(), 1);
}

#[test]
fn a_guest_connection_reaches_the_port_socket_and_half_closes() {
    let mut host = Host::new("peer");
    let listener = UnixListener::bind(host.dir.join("v.sock_52")).unwrap();
    let guest = guest_header(op::REQUEST, 1024, 52);
    host.send(guest, &[]);
    let response = host.recv_op();
    assert_eq!(
        (response.op, response.src_port, response.dst_port),
        (op::RESPONSE, 52, 1024)
    );
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    host.send(
        Header {
            op: op::RW,
            ..guest
        },
        b"request",
    );
    // The guest sends no more: the host reads the data, then end of file.
    host.send(
        Header {
            op: op::SHUTDOWN,
            flags: SHUTDOWN_SEND,
            ..guest
        },
        &[],
    );
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"request");
    // The other direction still works.
    stream.write_all(b"reply").unwrap();
    host.settle();
    let (rw, data) = host.recv().unwrap();
    assert_eq!((rw.op, data.as_slice()), (op::RW, &b"reply"[..]));
    // The host shuts its side too: both are done, and the guest gets a reset after the
    // shutdown.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    host.settle();
    let shutdown = host.recv_op();
    assert_eq!((shutdown.op, shutdown.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    assert_eq!(host.recv_op().op, op::RST);
    assert_eq!(host.muxer.connections(), 0);
}

#[test]
fn a_guest_connecting_to_a_port_nobody_listens_on_gets_a_reset() {
    let mut host = Host::new("closed");
    host.send(guest_header(op::REQUEST, 1024, 53), &[]);
    let rst = host.recv_op();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port, rst.dst_cid),
        (op::RST, 53, 1024, CID)
    );
    assert_eq!(host.muxer.connections(), 0);
}

#[test]
fn the_guest_never_gets_more_than_its_credit() {
    let mut host = Host::new("credit");
    let listener = UnixListener::bind(host.dir.join("v.sock_52")).unwrap();
    let guest = Header {
        buf_alloc: 10,
        ..guest_header(op::REQUEST, 1024, 52)
    };
    host.send(guest, &[]);
    assert_eq!(host.recv_op().op, op::RESPONSE);
    let (mut stream, _) = listener.accept().unwrap();
    stream.write_all(&[7u8; 100]).unwrap();
    host.settle();
    let (rw, data) = host.recv().unwrap();
    assert_eq!((rw.op, data.len()), (op::RW, 10));
    // Out of credit: the guest is asked for more, once, and the rest stays in the socket.
    assert_eq!(host.recv_op().op, op::CREDIT_REQUEST);
    host.settle();
    assert!(host.recv().is_none());
    host.send(
        Header {
            op: op::CREDIT_UPDATE,
            fwd_cnt: 10,
            ..guest
        },
        &[],
    );
    host.settle();
    let (rw, data) = host.recv().unwrap();
    assert_eq!((rw.op, data.len()), (op::RW, 10));
}

#[test]
fn the_guest_hears_of_its_new_credit_as_the_host_reads() {
    let mut host = Host::new("update");
    let (mut stream, guest) = host.open_local();
    let chunk = vec![1u8; 20 * 1024];
    host.send(
        Header {
            op: op::RW,
            ..guest
        },
        &chunk,
    );
    assert!(host.recv().is_none(), "no update after 20 KiB");
    host.send(
        Header {
            op: op::RW,
            ..guest
        },
        &chunk,
    );
    let update = host.recv_op();
    assert_eq!((update.op, update.fwd_cnt), (op::CREDIT_UPDATE, 40 * 1024));
    let mut all = vec![0u8; 40 * 1024];
    stream.read_exact(&mut all).unwrap();
    // Asked, the device answers with its credit at once.
    host.send(
        Header {
            op: op::CREDIT_REQUEST,
            ..guest
        },
        &[],
    );
    assert_eq!(host.recv_op().op, op::CREDIT_UPDATE);
}

#[test]
fn a_guest_that_ignores_credit_loses_the_connection_not_memory() {
    let mut host = Host::new("overrun");
    let (_stream, guest) = host.open_local();
    // The host never reads: the socket fills, then the connection's buffer, then the guest has
    // sent more than the credit it was given.
    let chunk = vec![0u8; MAX_PKT_DATA];
    let mut sent = 0usize;
    'overrun: loop {
        host.send(
            Header {
                op: op::RW,
                ..guest
            },
            &chunk,
        );
        sent += chunk.len();
        assert!(
            sent < 64 << 20,
            "the muxer took {sent} bytes without complaint"
        );
        // Credit updates come while the socket takes data; a reset ends it.
        while let Some((header, _)) = host.recv() {
            if header.op == op::RST {
                break 'overrun;
            }
            assert_eq!(header.op, op::CREDIT_UPDATE);
        }
    }
    assert_eq!(host.muxer.connections(), 0);
    assert!(host.stats.snapshot().contains(&("conns_killed", 1)));
}

#[test]
fn packets_for_no_connection_get_a_bounded_number_of_resets() {
    let mut host = Host::new("unknown");
    // A reset needs no answer, a foreign CID is dropped, and neither is a connection.
    host.send(guest_header(op::RST, 5, 6), &[]);
    host.send(
        Header {
            dst_cid: 7,
            ..guest_header(op::REQUEST, 5, 6)
        },
        &[],
    );
    host.send(
        Header {
            src_cid: 4,
            ..guest_header(op::RW, 5, 6)
        },
        &[],
    );
    assert!(host.recv().is_none());
    // Another socket type is reset.
    host.send(
        Header {
            type_: 2,
            ..guest_header(op::REQUEST, 5, 6)
        },
        &[],
    );
    assert_eq!(host.recv_op().op, op::RST);
    for port in 0..(2 * MAX_RESETS as u32) {
        host.send(guest_header(op::RW, port, 6), b"x");
    }
    let mut resets = 0;
    while let Some((header, _)) = host.recv() {
        assert_eq!(header.op, op::RST);
        resets += 1;
    }
    assert_eq!(resets, MAX_RESETS);
}

#[test]
fn many_connections_keep_their_own_streams() {
    const COUNT: usize = 256;
    let mut host = Host::new("many");
    let mut streams = Vec::new();
    for i in 0..COUNT {
        let mut stream = UnixStream::connect(host.dir.join("v.sock")).unwrap();
        stream
            .write_all(format!("CONNECT {}\n", 1000 + i).as_bytes())
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        streams.push(stream);
    }
    for _ in 0..COUNT {
        host.settle();
    }
    let mut local_ports = vec![0u32; COUNT];
    while let Some((request, _)) = host.recv() {
        assert_eq!(request.op, op::REQUEST);
        let i = usize::try_from(request.dst_port - 1000).unwrap();
        local_ports[i] = request.src_port;
        host.send(
            guest_header(op::RESPONSE, request.dst_port, request.src_port),
            &[],
        );
    }
    assert!(local_ports.iter().all(|p| *p >= FIRST_LOCAL));
    assert_eq!(host.muxer.connections(), COUNT);
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut ok = vec![0u8; format!("OK {}\n", local_ports[i]).len()];
        stream.read_exact(&mut ok).unwrap();
        let port = u32::try_from(1000 + i).unwrap();
        let data = format!("to {i}");
        host.send(guest_header(op::RW, port, local_ports[i]), data.as_bytes());
        let mut got = vec![0u8; data.len()];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(got, data.as_bytes());
        stream.write_all(format!("from {i}").as_bytes()).unwrap();
    }
    host.settle();
    let mut seen = 0;
    while let Some((rw, data)) = host.recv() {
        let i = usize::try_from(rw.dst_port - 1000).unwrap();
        assert_eq!(rw.src_port, local_ports[i]);
        assert_eq!(data, format!("from {i}").as_bytes());
        seen += 1;
    }
    assert_eq!(seen, COUNT);
}

#[test]
fn a_request_the_guest_never_answers_times_out() {
    let mut host = Host::new("timeout");
    let mut stream = host.connect(b"CONNECT 52\n");
    assert_eq!(host.recv_op().op, op::REQUEST);
    std::thread::sleep(ANSWER_TIMEOUT_FOR_TESTS + Duration::from_millis(200));
    host.settle();
    assert_eq!(host.recv_op().op, op::RST);
    let mut buf = [0u8; 4];
    assert_eq!(stream.read(&mut buf).unwrap(), 0);
    assert_eq!(host.muxer.connections(), 0);
}

#[test]
fn a_driver_reset_drops_every_connection_but_keeps_listening() {
    let mut host = Host::new("reset");
    let (mut stream, _) = host.open_local();
    let _pending = host.connect(b"CONN");
    host.muxer.reset();
    assert_eq!(host.muxer.connections(), 0);
    let mut buf = [0u8; 4];
    assert_eq!(stream.read(&mut buf).unwrap(), 0);
    let _again = host.connect(b"CONNECT 52\n");
    assert_eq!(host.recv_op().op, op::REQUEST);
}

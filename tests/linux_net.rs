//! End-to-end virtio-net with the real Linux guest, in network namespaces the test creates and
//! removes on the VMM's host (this machine on hardware KVM, L1 inside the rig):
//! - the guest configures eth0 statically and pings the host end of its tap;
//! - 100 MiB cross the tap in each direction over TCP (busybox nc) with matching checksums;
//! - two guests on two taps attached to one bridge reach each other.

// Test code reports failures by panicking.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::OnceLock;

use common::linux::{
    finished_script, peer_finish, peer_start, peer_wait_ready, script_drive, Outcome, Outcomes,
    Scenario,
};

/// iproute2 from the payload: busybox sh would run its own, smaller `ip` applet.
const IP: &str = "$PWD/bin/ip";

fn config(tap: &str, mac: &str, script: &str) -> String {
    format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "vmlinux", "initrd_path": "initramfs.cpio.gz",
                  "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script=/dev/vda"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 512}},
  "drives": [{{"drive_id": "script", "path_on_host": "{script}", "is_root_device": false,
              "is_read_only": true}}],
  "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "{tap}", "guest_mac": "{mac}"}}]
}}"#
    )
}

const SINGLE_GUEST: &str = r#"
ip link set eth0 up
ip addr add 172.16.0.2/24 dev eth0
echo "GUEST-MAC=$(cat /sys/class/net/eth0/address)"
ping -c 3 -W 5 172.16.0.1 >/dev/null && echo "GUEST-PING=ok" || echo "GUEST-PING=failed"
sleep 600 | nc -l -p 5002 > /tmp/from-host.bin &
dd if=/dev/urandom of=/tmp/to-host.bin bs=1M count=100 2>/dev/null
echo "GUEST-SENT-SHA=$(sha256sum /tmp/to-host.bin | cut -d' ' -f1)"
nc -w 3 172.16.0.1 5001 < /tmp/to-host.bin; echo "GUEST-SEND-RC=$?"
rm /tmp/to-host.bin
# The listener exits when the host closes its end.
i=0
while pidof nc >/dev/null && [ $i -lt 300 ]; do sleep 1; i=$((i + 1)); done
echo "GUEST-RECV-SHA=$(sha256sum /tmp/from-host.bin | cut -d' ' -f1)"
"#;

fn single_guest() -> Scenario {
    Scenario {
        name: "net-single",
        config: config("tap0", "06:00:ac:10:00:02", "net-single.script"),
        files: vec![("net-single.script".into(), script_drive(SINGLE_GUEST))],
        before: format!(
            r#"mkdir -p /run/netns
{IP} netns add kn1
{IP} netns exec kn1 {IP} tuntap add dev tap0 mode tap
{IP} -n kn1 addr add 172.16.0.1/24 dev tap0
{IP} -n kn1 link set tap0 up
{IP} -n kn1 link set lo up
dd if=/dev/urandom of=to-guest.bin bs=1M count=100 2>/dev/null
echo "HOST-SENT-SHA=$(sha256sum to-guest.bin | cut -d' ' -f1)"
sleep 600 | {IP} netns exec kn1 nc -l -p 5001 > from-guest.bin &
# Until the guest listens each try is refused: its message would land inside a console line.
(for i in $(seq 300); do {IP} netns exec kn1 nc -w 3 172.16.0.2 5002 < to-guest.bin 2>/dev/null \
    && break; sleep 1; done) &"#
        ),
        wrapper: "./bin/ip netns exec kn1",
        after: format!(
            r#"i=0
while pidof nc >/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
echo "HOST-RECV-SHA=$(sha256sum from-guest.bin | cut -d' ' -f1)"
pkill sleep; pkill nc
{IP} netns del kn1
echo "HOST-NETNS-LEFT=$({IP} netns list | wc -l)"
rm -f to-guest.bin from-guest.bin"#
        ),
        // 100 MiB each way take about a minute in the rig, several on a loaded machine.
        timeout_secs: Some(600),
        ..Default::default()
    }
}

/// Seconds each bridged guest may run: the second boots once the first is up, and each pings
/// until the other is up (for 120 tries).
const BRIDGE_TIMEOUT_SECS: u32 = 300;
/// Seconds the second bridged guest waits for the first one's marker before it boots anyway:
/// a rig guest under host load has been seen to take up to two minutes to its console.
const BOOT_WAIT_SECS: u32 = 120;

/// The script of one of the two bridged guests: ping the other until it answers, then stay up
/// long enough for the other to reach this one too.
fn bridged_guest(me: &str, peer: &str) -> String {
    format!(
        r#"
ip link set eth0 up
ip addr add 172.16.1.{me}/24 dev eth0
i=0
until ping -c 1 -W 1 172.16.1.{peer} >/dev/null; do
    i=$((i + 1)); [ $i -ge 120 ] && break
done
[ $i -lt 120 ] && echo "GUEST-{me}-REACHED-{peer}=yes" || echo "GUEST-{me}-REACHED-{peer}=no"
sleep 20
"#
    )
}

fn bridged_guests() -> Scenario {
    Scenario {
        name: "net-bridge",
        config: config("tap2", "06:00:ac:10:01:03", "guest3.script"),
        files: vec![
            (
                "guest2.script".into(),
                script_drive(&bridged_guest("2", "3")),
            ),
            (
                "guest3.script".into(),
                script_drive(&bridged_guest("3", "2")),
            ),
            (
                "guest2.json".into(),
                config("tap1", "06:00:ac:10:01:02", "guest2.script").into_bytes(),
            ),
        ],
        before: format!(
            r#"mkdir -p /run/netns
{IP} netns add kn2
{IP} -n kn2 link add br0 type bridge
{IP} -n kn2 link set br0 up
for tap in tap1 tap2; do
    {IP} netns exec kn2 {IP} tuntap add dev $tap mode tap
    {IP} -n kn2 link set $tap master br0
    {IP} -n kn2 link set $tap up
done
{peer}
{ready}"#,
            peer = peer_start(
                "guest2",
                "./bin/ip netns exec kn2",
                "guest2.json",
                BRIDGE_TIMEOUT_SECS
            ),
            ready = peer_wait_ready("guest2", BOOT_WAIT_SECS),
        ),
        wrapper: "./bin/ip netns exec kn2",
        after: format!(
            r#"{peer}
{IP} netns del kn2"#,
            peer = peer_finish("guest2"),
        ),
        timeout_secs: Some(BRIDGE_TIMEOUT_SECS),
        ..Default::default()
    }
}

fn outcome(name: &str) -> &'static Outcome {
    static OUTCOMES: Outcomes = OnceLock::new();
    finished_script(&OUTCOMES, || vec![single_guest(), bridged_guests()], name)
}

#[test]
fn guest_pings_the_host_end_of_its_tap() {
    let o = outcome("net-single");
    assert_eq!(o.expect_value("GUEST-MAC"), "06:00:ac:10:00:02");
    assert_eq!(o.expect_value("GUEST-PING"), "ok", "{}", o.tail());
}

#[test]
fn a_100mib_tcp_transfer_each_way_arrives_intact() {
    let o = outcome("net-single");
    assert_eq!(o.expect_value("GUEST-SEND-RC"), "0", "{}", o.tail());
    let to_host = o.expect_value("GUEST-SENT-SHA");
    assert_eq!(to_host.len(), 64);
    assert_eq!(o.expect_value("HOST-RECV-SHA"), to_host, "guest -> host");
    assert_eq!(
        o.expect_value("GUEST-RECV-SHA"),
        o.expect_value("HOST-SENT-SHA"),
        "host -> guest"
    );
    assert_eq!(
        o.expect_value("HOST-NETNS-LEFT"),
        "0",
        "the namespace is removed"
    );
}

#[test]
fn two_guests_on_one_bridge_reach_each_other() {
    let o = outcome("net-bridge");
    assert_eq!(o.expect_value("GUEST-3-REACHED-2"), "yes", "{}", o.tail());
    assert_eq!(o.peers(), [("guest2".to_string(), 0)], "{}", o.tail());
    assert_eq!(
        o.peer_value("guest2", "GUEST-2-REACHED-3").as_deref(),
        Some("yes"),
        "{}",
        o.tail()
    );
    assert_eq!(
        o.peer_value("guest2", "KILN-SCRIPT-EXIT rc").as_deref(),
        Some("0"),
        "{}",
        o.tail()
    );
}

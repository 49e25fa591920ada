//! Disk-consistent snapshots and clones, in the rig. The guest boots from a qcow2 overlay over
//! the raw root image, on a tap with no host address, and counts as in the Full scenario,
//! pinging the host after each count. Kiln A snapshots it (its root drive frozen, A going on on
//! a new overlay) and counts on before it is killed; then three kilns load the snapshot at
//! once, each with its own overlay over the frozen image (`drive_overrides`) and its own tap
//! (`network_overrides`), only the first tap with the host address. Each clone counts on from
//! the snapshot and writes its counts to its own overlay, the first one's pings reach the host,
//! and the frozen image is unchanged, passes `qemu-img check`, and holds the counts up to the
//! snapshot.

/// The counter, on eth0 (172.16.3.2), pinging the host end (172.16.3.1) after each count:
/// `NET up` once it answers.
fn counter() -> String {
    super::counter(
        "ip link set eth0 up\nip addr add 172.16.3.2/24 dev eth0",
        "ping -c 1 -W 1 172.16.3.1 >/dev/null 2>&1 && status=' NET up' || status=' NET down'",
    )
}

/// Kiln A boots and snapshots the guest, then goes on; kilns c1 to c3 load the snapshot at
/// once. Taps in the netns `kc`: tapa for A, tapb (with the host address), tapc and tapd for
/// the clones.
const DRIVER: &str = r##"
drive() {
# iproute2 from the payload: busybox sh would run its own, smaller `ip` applet.
IP=$PWD/bin/ip
CR=$(printf '\r')
api() {
    if [ -n "$3" ]; then
        curl -s -o "resp-$SOCK_NAME.txt" -w '%{http_code}' --unix-socket "/tmp/kiln-$SOCK_NAME.sock" \
            -X "$1" "http://localhost$2" -H 'Content-Type: application/json' -d "$3"
    else
        curl -s -o "resp-$SOCK_NAME.txt" -w '%{http_code}' --unix-socket "/tmp/kiln-$SOCK_NAME.sock" \
            -X "$1" "http://localhost$2"
    fi
}
start_kiln() {
    SOCK_NAME=$1
    rm -f "/tmp/kiln-$1.sock"
    $IP netns exec kc ./kiln --api-sock "/tmp/kiln-$1.sock" --id "clone-$1" </dev/null \
        >"kiln-$1.out" 2>&1 &
    eval "KILN_$1=$!"
    i=0; while [ ! -S "/tmp/kiln-$1.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
}
# Whole counter lines of kiln $1's console: "COUNT n BOOT id UP secs NET up|down".
counts() {
    grep -a -E "^COUNT [0-9]+ BOOT [0-9a-f-]+ UP [0-9.]+ NET (up|down)$CR\$" "kiln-$1.out" | tr -d '\r'
}
last() { counts "$1" | tail -n1; }
wait_count() {
    i=0; while [ "$(counts "$1" | wc -l)" -lt "$2" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
}
# The root drive's image, as GET /vm/config shows it.
drive_path() {
    api GET /vm/config >/dev/null
    sed 's/.*"drive_id":"rootfs"[^}]*"path_on_host":"\([^"]*\)".*/\1/' "resp-$SOCK_NAME.txt"
}

mkdir -p /run/netns
$IP netns add kc
for tap in tapa tapb tapc tapd; do
    $IP netns exec kc $IP tuntap add dev $tap mode tap
    $IP -n kc link set $tap up
done
$IP -n kc addr add 172.16.3.1/24 dev tapb
$IP -n kc link set lo up

start_kiln a
echo "CLONE-BOOT-SOURCE=$(api PUT /boot-source '{"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux kiln.script=/dev/vdb"}')"
echo "CLONE-ROOTFS=$(api PUT /drives/rootfs '{"drive_id": "rootfs", "path_on_host": "clone-root.qcow2", "is_root_device": true, "is_read_only": false}')"
echo "CLONE-SCRIPT=$(api PUT /drives/script '{"drive_id": "script", "path_on_host": "clone-counter.script", "is_root_device": false, "is_read_only": true}')"
echo "CLONE-NET=$(api PUT /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "tapa", "guest_mac": "06:00:ac:10:03:02"}')"
echo "CLONE-MACHINE=$(api PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}')"
echo "CLONE-START=$(api PUT /actions '{"action_type": "InstanceStart"}')"
wait_count a 3
echo "CLONE-PAUSE=$(api PATCH /vm '{"state": "Paused"}')"
echo "CLONE-CREATE=$(api PUT /snapshot/create '{"snapshot_path": "clone.snap", "mem_file_path": "clone.mem"}') $(cat resp-a.txt)"
echo "CLONE-LAST-A=$(last a)"
echo "CLONE-DRIVE-A=$(drive_path)"
sha256sum clone-root.qcow2 > frozen.sha256
echo "CLONE-RESUME-A=$(api PATCH /vm '{"state": "Resumed"}')"
# A goes on on its new overlay while the clones load.
for n in 1 2 3; do
    tap=$(echo b c d | cut -d' ' -f$n)
    start_kiln c$n
    echo "CLONE-LOAD-$n=$(api PUT /snapshot/load "{\"snapshot_path\": \"clone.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"clone.mem\"}, \"resume_vm\": true, \"network_overrides\": [{\"iface_id\": \"eth0\", \"host_dev_name\": \"tap$tap\"}], \"drive_overrides\": [{\"drive_id\": \"rootfs\", \"path_on_host\": \"clone$n.qcow2\"}]}") $(cat resp-c$n.txt)"
    echo "CLONE-DRIVE-$n=$(drive_path)"
done
for n in 1 2 3; do wait_count c$n 4; done
# The first clone's pings reach the host on its new tap.
i=0; while ! counts c1 | grep -q 'NET up$' && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "CLONE-LAST-A-RUN=$(last a)"
for n in 1 2 3; do
    echo "CLONE-FIRST-$n=$(counts c$n | head -n1)"
    echo "CLONE-LAST-$n=$(last c$n)"
    echo "CLONE-NET-UP-$n=$(counts c$n | grep -c 'NET up$')"
done
for k in $KILN_a $KILN_c1 $KILN_c2 $KILN_c3; do kill -9 $k; wait $k 2>/dev/null; done
$IP netns del kc
cat kiln-a.out kiln-c1.out kiln-c2.out kiln-c3.out
}
drive
"##;

pub fn scenario() -> super::Scenario {
    super::Scenario {
        name: "snapshot-clones",
        config: String::new(),
        files: vec![(
            "clone-counter.script".into(),
            super::script_drive(&counter()),
        )],
        before: "qemu-img create -q -f qcow2 -F raw -b rootfs.ext4 clone-root.qcow2".into(),
        run: DRIVER.into(),
        after: r#"
sha256sum -c -s frozen.sha256 && echo "CLONE-FROZEN-UNCHANGED=yes" || echo "CLONE-FROZEN-UNCHANGED=no"
qemu-img check -q clone-root.qcow2; echo "CLONE-FROZEN-CHECK-RC=$?"
for image in clone-root clone1 clone2 clone3; do
    qemu-img convert -U -O raw $image.qcow2 $image.raw
    echo "CLONE-DISK-$image=$(debugfs -R 'cat /root/count.log' $image.raw 2>/dev/null | tr '\n' ' ')"
    rm -f $image.raw
done
rm -f clone-root.qcow2 clone1.qcow2 clone2.qcow2 clone3.qcow2 clone.snap clone.mem clone.snap.*"#
            .into(),
        timeout_secs: Some(600),
        ..Default::default()
    }
}

/// A console line `COUNT n BOOT id UP secs NET up|down` (the value of `key`) as (n, id, secs).
fn count_on(key: &str) -> (u64, String, f64) {
    let line = value(key);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 8, "{key}={line:?}:\n{}", tail());
    (
        f[1].parse().unwrap(),
        f[3].to_string(),
        f[5].parse().unwrap(),
    )
}

fn value(key: &str) -> String {
    super::outcome_of_scenario("snapshot-clones").expect_value(key)
}

fn tail() -> String {
    super::outcome_of_scenario("snapshot-clones").tail()
}

/// The counts in the file on an image, as the run listed them.
fn disk(image: &str) -> Vec<u64> {
    value(&format!("CLONE-DISK-{image}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Whether `disk` holds every count once from 1 up to `printed` (or one more, which the
/// guest may have appended and synced but not printed yet).
fn holds_counts_up_to(disk: &[u64], printed: u64) -> bool {
    let expected: Vec<u64> = (1..=disk.len() as u64).collect();
    let n = disk.len() as u64;
    disk == expected && (n == printed || n == printed + 1)
}

#[test]
fn the_snapshot_freezes_the_qcow2_root_and_the_vm_goes_on_on_an_overlay() {
    for step in [
        "CLONE-BOOT-SOURCE",
        "CLONE-ROOTFS",
        "CLONE-SCRIPT",
        "CLONE-NET",
        "CLONE-MACHINE",
        "CLONE-START",
        "CLONE-PAUSE",
        "CLONE-CREATE",
        "CLONE-RESUME-A",
    ] {
        assert_eq!(value(step), "204", "{step}:\n{}", tail());
    }
    assert_eq!(value("CLONE-DRIVE-A"), "clone.snap.rootfs.1.qcow2");
    let (saved, _, _) = count_on("CLONE-LAST-A");
    let (later, _, _) = count_on("CLONE-LAST-A-RUN");
    assert!(
        later > saved,
        "A did not count on after the snapshot: {saved}, {later}"
    );
    assert_eq!(value("CLONE-FROZEN-UNCHANGED"), "yes", "{}", tail());
    assert_eq!(value("CLONE-FROZEN-CHECK-RC"), "0");
    let frozen = disk("clone-root");
    assert!(
        holds_counts_up_to(&frozen, saved),
        "the frozen image holds {frozen:?}, the snapshot was taken at {saved}"
    );
}

#[test]
fn three_clones_at_once_count_on_each_on_its_own_overlay_and_tap() {
    let (saved, boot, _) = count_on("CLONE-LAST-A");
    for n in 1..=3 {
        assert_eq!(
            value(&format!("CLONE-LOAD-{n}")),
            "204",
            "clone {n}:\n{}",
            tail()
        );
        assert_eq!(
            value(&format!("CLONE-DRIVE-{n}")),
            format!("clone{n}.qcow2")
        );
        let (first, boot_n, _) = count_on(&format!("CLONE-FIRST-{n}"));
        let (last, _, _) = count_on(&format!("CLONE-LAST-{n}"));
        assert_eq!(boot_n, boot, "clone {n} booted again");
        assert!(
            first == saved + 1 || first == saved + 2,
            "clone {n}: {saved} at the snapshot, {first} first:\n{}",
            tail()
        );
        assert!(last >= first + 3, "clone {n}: {first}..{last}");
        let counts = disk(&format!("clone{n}"));
        assert!(
            counts.len() as u64 > saved && holds_counts_up_to(&counts, last),
            "clone {n}'s overlay holds {counts:?}, it printed up to {last}"
        );
    }
}

#[test]
fn the_first_clone_pings_the_host_on_its_new_tap() {
    let up: u32 = value("CLONE-NET-UP-1").parse().unwrap();
    assert!(up > 0, "clone 1 never reached the host:\n{}", tail());
    // A's tap and the other clones' have no host address: nothing answers there.
    for n in 2..=3 {
        assert_eq!(value(&format!("CLONE-NET-UP-{n}")), "0", "clone {n}");
    }
}

//! The host end of a guest network interface: a tap device opened by name, and the [`FrameIo`]
//! trait through which the device reads and writes whole frames, so that tests can stand in a
//! socket for the tap.
//!
//! Kiln never creates taps: the operator (or the jailer) creates a persistent one with
//! `ip tuntap add NAME mode tap`, and Kiln attaches to it. Every frame crossing the tap carries
//! a 12-byte `virtio_net_hdr_v1` in front, the same header the guest uses, so frames pass
//! between guest buffers and the tap without translation.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// The tun/tap control device.
const TUN_PATH: &str = "/dev/net/tun";

/// Whole-frame I/O on the host side of the device. Every frame starts with the 12-byte
/// `virtio_net_hdr_v1`. Reads and writes never block: they fail with `WouldBlock` instead.
pub trait FrameIo: AsRawFd + Send + std::fmt::Debug {
    /// Reads one frame into `buf` and returns its length; a frame longer than `buf` is cut.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes `frame` whole.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;

    /// Sets the offloads (`TUN_F_*`) the guest accepts in the frames it receives.
    fn set_offload(&mut self, flags: u32) -> Result<(), TapError>;
}

/// Why a tap could not be opened or configured. Each message names the tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("The tap name '{0}' is not a valid interface name (1 to 15 bytes, no '/' or NUL).")]
    InvalidName(String),
    /// No interface has that name.
    #[error("The tap '{0}' does not exist; create it with `ip tuntap add {0} mode tap`.")]
    Missing(String),
    /// /dev/net/tun could not be opened.
    #[error("Failed to open {TUN_PATH} for the tap '{name}': {source}")]
    OpenTun { name: String, source: io::Error },
    /// Another process (or another device) has the tap open.
    #[error("The tap '{0}' is busy: another process has it open.")]
    Busy(String),
    /// The tap belongs to another user or group, or the process lacks CAP_NET_ADMIN (which
    /// is also what a missing tap looks like to an unprivileged process).
    #[error(
        "Permission denied attaching to the tap '{0}': it belongs to another user, or does not \
         exist."
    )]
    PermissionDenied(String),
    /// TUNSETIFF failed otherwise, e.g. the interface is not a tap.
    #[error("Failed to attach to the tap '{name}' (is it a tap device?): {source}")]
    Attach { name: String, source: io::Error },
    /// TUNSETVNETHDRSZ failed.
    #[error("Failed to set the virtio-net header size of the tap '{name}': {source}")]
    VnetHdrSize { name: String, source: io::Error },
    /// TUNSETOFFLOAD failed.
    #[error("Failed to set the offloads {flags:#x} of the tap '{name}': {source}")]
    SetOffload {
        name: String,
        flags: u32,
        source: io::Error,
    },
}

/// An open tap device, attached with a virtio-net header on every frame.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap `name`, non-blocking, with 12-byte virtio-net headers.
    pub fn open_named(name: &str) -> Result<Tap, TapError> {
        let ifr_name = ifr_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        // SAFETY: an all-zero ifreq is valid: a NUL name and a zero union.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        ifr.ifr_name = ifr_name;
        // The flags are 16 bits in the kernel's ifreq.
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: `file` is an open tun fd and `ifr` a valid ifreq the kernel reads and writes
        // within its size.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match source.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EPERM | libc::EACCES) => TapError::PermissionDenied(name),
                _ => TapError::Attach { name, source },
            });
        }
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        // TUNSETIFF on an unknown name creates a transient tap nobody configured (given
        // CAP_NET_ADMIN). A tap someone set up is persistent, or held open by another process
        // and then busy; so a transient one here is one just created, and goes away with the fd.
        // (Asked of the tap itself, not of /sys, which a jail does not have.)
        if !tap.is_persistent()? {
            return Err(TapError::Missing(name.to_string()));
        }
        tap.set_vnet_hdr_size(VNET_HDR_LEN)?;
        Ok(tap)
    }

    /// Whether the tap outlives its file descriptors (`ip tuntap add` makes it so).
    fn is_persistent(&self) -> Result<bool, TapError> {
        // SAFETY: an all-zero ifreq is valid: a NUL name and a zero union.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: `file` is an attached tun fd and `ifr` a valid ifreq the kernel writes
        // within its size.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::Attach {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNGETIFF fills the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        Ok(i32::from(flags) & libc::IFF_PERSIST != 0)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the length of the virtio-net header in front of every frame.
    pub fn set_vnet_hdr_size(&self, len: usize) -> Result<(), TapError> {
        let len = libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX);
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which is valid.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
        if ret < 0 {
            return Err(TapError::VnetHdrSize {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The virtio-net header length the tap uses, as the kernel reports it.
    pub fn vnet_hdr_size(&self) -> io::Result<usize> {
        let mut len: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one c_int through the pointer, which is valid.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut len) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        usize::try_from(len).map_err(io::Error::other)
    }
}

/// `name` as the NUL-terminated array of an ifreq.
fn ifr_name(name: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], TapError> {
    let invalid = || TapError::InvalidName(name.to_string());
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&b'/') {
        return Err(invalid());
    }
    let mut out = [0; libc::IFNAMSIZ];
    for (dst, &src) in out.iter_mut().zip(bytes) {
        if src == 0 {
            return Err(invalid());
        }
        *dst = src as libc::c_char;
    }
    Ok(out)
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // A tap read returns exactly one frame.
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // A tap write takes exactly one frame; a short count would mean a cut frame.
        let written = self.file.write(frame)?;
        if written != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("the tap took {written} of {} bytes", frame.len()),
            ));
        }
        Ok(())
    }

    fn set_offload(&mut self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(TapError::SetOffload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for name in ["", "a/b", "sixteen-bytes-xx", "nul\0"] {
            assert!(
                matches!(Tap::open_named(name), Err(TapError::InvalidName(_))),
                "{name:?}"
            );
        }
        assert!(ifr_name("fifteen-bytes-x").is_ok());
    }

    /// Deletes the tap it created when dropped, even when the test fails.
    struct TestTap(&'static str);

    impl TestTap {
        fn create(name: &'static str) -> Option<TestTap> {
            let status = Command::new("ip")
                .args(["tuntap", "add", "dev", name, "mode", "tap"])
                .status()
                .ok()?;
            status.success().then_some(TestTap(name))
        }
    }

    impl Drop for TestTap {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["tuntap", "del", "dev", self.0, "mode", "tap"])
                .status();
        }
    }

    #[test]
    fn a_real_tap_opens_once_with_the_virtio_header() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a tap needs root");
            return;
        }
        let missing = Tap::open_named("kilnt-missing").unwrap_err();
        assert!(matches!(missing, TapError::Missing(_)));
        assert!(missing.to_string().contains("kilnt-missing"));
        assert!(!Path::new("/sys/class/net/kilnt-missing").exists());

        let _tap = TestTap::create("kilnt0").expect("`ip tuntap add` failed");
        let mut tap = Tap::open_named("kilnt0").unwrap();
        assert_eq!(tap.name(), "kilnt0");
        assert_eq!(tap.vnet_hdr_size().unwrap(), VNET_HDR_LEN);
        let csum_tso = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        tap.set_offload(csum_tso).unwrap();
        tap.set_offload(0).unwrap();
        // The interface is down: nothing to read.
        let mut buf = [0u8; 64];
        let err = tap.read_frame(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);

        let busy = Tap::open_named("kilnt0").unwrap_err();
        assert!(matches!(busy, TapError::Busy(_)), "{busy}");
        assert!(busy.to_string().contains("kilnt0"));
        drop(tap);
        // Closing detaches: the tap can be opened again.
        Tap::open_named("kilnt0").unwrap();
    }
}

//! The Uffd memory backend, as Firecracker's: guest memory is mapped anonymous, registered with
//! a new userfaultfd for missing pages, and the userfaultfd goes with the regions' layout to a
//! page-fault handler listening on a Unix socket (the JSON array of `GuestRegionUffdMapping`
//! Firecracker sends, the fd in `SCM_RIGHTS`), which then serves every first touch of a page.
//! Firecracker's example handlers work unchanged. The kernel interface is a handful of ioctls,
//! defined here (with what a handler needs, for `kiln-uffd-handler`) rather than through a
//! crate whose build needs libclang.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use devices::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// The userfaultfd ioctls' type.
const UFFDIO: u32 = 0xaa;
/// The API version.
pub const UFFD_API: u64 = 0xaa;
/// Tell the handler when memory is removed (balloon), as Firecracker requires.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Faults on missing pages.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// A page fault event.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// A removal event.
pub const UFFD_EVENT_REMOVE: u8 = 0x15;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioApi {
    /// The API version.
    pub api: u64,
    /// Features asked for, and granted.
    pub features: u64,
    /// The ioctls available.
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioRange {
    /// Start address.
    pub start: u64,
    /// Length.
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioRegister {
    /// The range.
    pub range: UffdioRange,
    /// Which faults.
    pub mode: u64,
    /// The ioctls available on the range.
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct UffdioCopy {
    /// Where in the faulting process.
    pub dst: u64,
    /// From where in the handler.
    pub src: u64,
    /// How many bytes.
    pub len: u64,
    /// 0: wake the faulting thread.
    pub mode: u64,
    /// Bytes copied, or a negative errno.
    pub copy: i64,
}

vmm_sys_util::ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3f, UffdioApi);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, UffdioRegister);
vmm_sys_util::ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, UffdioCopy);

/// What the handler is told of one guest memory region (Firecracker's
/// `GuestRegionUffdMapping`, field for field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Where the region is mapped in kiln.
    pub base_host_virt_addr: u64,
    /// Its size.
    pub size: usize,
    /// Where its contents start in the memory file.
    pub offset: u64,
    /// Its page size in bytes.
    pub page_size: usize,
    /// The same, under the name Firecracker's first version gave it.
    pub page_size_kib: usize,
}

/// Why the Uffd backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// A userfaultfd could not be created (the kernel may refuse unprivileged ones).
    #[error("Cannot create a userfaultfd: {0}")]
    Create(std::io::Error),
    /// The kernel refused the API handshake or a region.
    #[error("Cannot {what} the userfaultfd: {source}")]
    Ioctl {
        what: &'static str,
        source: std::io::Error,
    },
    /// The handler's socket could not be reached.
    #[error("Cannot connect to the page-fault handler at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    /// The handshake could not be sent.
    #[error("Cannot send the guest memory layout to the page-fault handler: {0}")]
    Send(String),
}

/// The userfaultfd serving `mem` through the handler at `socket`; kept for the VM's life.
pub fn serve_with_handler(socket: &Path, mem: &GuestMemoryMmap) -> Result<OwnedFd, UffdError> {
    // SAFETY: userfaultfd(2) takes flags only and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    let fd = i32::try_from(fd)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(|| UffdError::Create(std::io::Error::last_os_error()))?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_EVENT_REMOVE,
        ioctls: 0,
    };
    ioctl(&uffd, UFFDIO_API(), &mut api, "negotiate the API of")?;
    let mut mappings = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let start = region.as_ptr() as u64;
        let mut register = UffdioRegister {
            range: UffdioRange {
                start,
                len: region.len(),
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(
            &uffd,
            UFFDIO_REGISTER(),
            &mut register,
            "register guest memory with",
        )?;
        let page_size = 4096;
        mappings.push(GuestRegionUffdMapping {
            base_host_virt_addr: start,
            size: region.size(),
            offset,
            page_size,
            page_size_kib: page_size,
        });
        offset += region.len();
    }
    let json = serde_json::to_string(&mappings).map_err(|e| UffdError::Send(e.to_string()))?;
    let stream = UnixStream::connect(socket).map_err(|source| UffdError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream
        .send_with_fd(json.as_bytes(), uffd.as_raw_fd())
        .map_err(|e| UffdError::Send(e.to_string()))?;
    Ok(uffd)
}

/// Runs the userfaultfd ioctl `request` on `arg`.
pub fn ioctl<T>(
    uffd: &OwnedFd,
    request: u64,
    arg: &mut T,
    what: &'static str,
) -> Result<(), UffdError> {
    // SAFETY: every request here takes a pointer to the `repr(C)` struct it is given, which
    // lives for the call; the kernel writes only within it.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), request as _, arg as *mut T) };
    if rc < 0 {
        return Err(UffdError::Ioctl {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_firecrackers_json() {
        let mapping = GuestRegionUffdMapping {
            base_host_virt_addr: 0x7f00_0000_0000,
            size: 0x800_0000,
            offset: 0,
            page_size: 4096,
            page_size_kib: 4096,
        };
        assert_eq!(
            serde_json::to_string(&[mapping]).unwrap(),
            r#"[{"base_host_virt_addr":139637976727552,"size":134217728,"offset":0,"page_size":4096,"page_size_kib":4096}]"#
        );
        // The ioctl numbers are the kernel's.
        assert_eq!(UFFDIO_API(), 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER(), 0xc020_aa00);
        assert_eq!(UFFDIO_COPY(), 0xc028_aa03);
    }
}

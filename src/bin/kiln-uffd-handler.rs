//! `kiln-uffd-handler SOCKET MEMORY_FILE`: a page-fault handler for `snapshot/load` with the
//! `Uffd` memory backend, speaking Firecracker's protocol (its example handlers are the other
//! implementation). It listens on SOCKET, takes one VMM's userfaultfd and guest memory layout,
//! maps MEMORY_FILE private, and copies each page the guest first touches from it; a page the
//! balloon removed comes back as zeros. It exits when the VMM process has gone.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use vmm::snapshot::uffd::{
    ioctl, GuestRegionUffdMapping, UffdioCopy, UFFDIO_COPY, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE,
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `struct uffd_msg`'s size; a page fault's address is at offset 16.
const MSG_LEN: usize = 32;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("kiln-uffd-handler: {what}: {e}");
    std::process::exit(1)
}

/// The memory file, mapped private and read-only.
struct Backing {
    ptr: *const u8,
    len: usize,
}

impl Backing {
    fn map(file: &File) -> Self {
        let len = file
            .metadata()
            .map(|m| m.len() as usize)
            .unwrap_or_else(|e| fail("memory file", e));
        // SAFETY: a fresh private read-only mapping of the whole file; nothing else maps it at
        // that address, and it lives as long as the process.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            fail("mmap", std::io::Error::last_os_error());
        }
        Self {
            ptr: ptr.cast(),
            len,
        }
    }
}

/// Copies the page at `addr` from the memory file, or zeros for a page the balloon removed,
/// into the VMM.
fn serve(
    uffd: &OwnedFd,
    regions: &[GuestRegionUffdMapping],
    backing: &Backing,
    addr: u64,
    removed: bool,
) {
    let Some(region) = regions
        .iter()
        .find(|r| addr >= r.base_host_virt_addr && addr - r.base_host_virt_addr < r.size as u64)
    else {
        fail("fault outside guest memory", format!("{addr:#x}"));
    };
    // The layout comes from the VMM; a page size that is no power of two would misalign.
    let page = match region.page_size as u64 {
        size if size >= 4096 && size.is_power_of_two() => size,
        _ => 4096,
    };
    let dst = addr & !(page - 1);
    let offset = region.offset + (dst - region.base_host_virt_addr);
    let zeros = vec![0u8; page as usize];
    let src = if !removed && offset + page <= backing.len as u64 {
        // SAFETY: `offset + page` is within the mapping, checked just above.
        unsafe { backing.ptr.add(offset as usize) }
    } else {
        zeros.as_ptr()
    };
    let mut copy = UffdioCopy {
        dst,
        src: src as u64,
        len: page,
        mode: 0,
        copy: 0,
    };
    if let Err(e) = ioctl(uffd, UFFDIO_COPY(), &mut copy, "copy a page through") {
        // Another thread's fault on the same page may have been served first.
        if copy.copy != -i64::from(libc::EEXIST) {
            fail("UFFDIO_COPY", e);
        }
    }
}

/// The process at the other end of `stream`.
fn peer_pid(stream: &std::os::unix::net::UnixStream) -> libc::pid_t {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a `ucred` of at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        fail("SO_PEERCRED", std::io::Error::last_os_error());
    }
    cred.pid
}

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [socket, memory] = args.as_slice() else {
        fail("usage", "kiln-uffd-handler SOCKET MEMORY_FILE");
    };
    let file = File::open(memory).unwrap_or_else(|e| fail("memory file", e));
    let backing = Backing::map(&file);
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap_or_else(|e| fail("bind", e));
    let (stream, _) = listener.accept().unwrap_or_else(|e| fail("accept", e));
    // The VMM drops its end once it has sent the layout; its process is what is watched.
    let vmm_pid = peer_pid(&stream);
    let mut buf = vec![0u8; 64 << 10];
    let (len, fd) = stream
        .recv_with_fd(&mut buf)
        .unwrap_or_else(|e| fail("receive", e));
    let Some(fd) = fd else {
        fail("receive", "no userfaultfd came with the layout");
    };
    let uffd = OwnedFd::from(fd);
    let regions: Vec<GuestRegionUffdMapping> =
        serde_json::from_slice(buf.get(..len).unwrap_or_default())
            .unwrap_or_else(|e| fail("layout", e));
    let mut removed: Vec<(u64, u64)> = Vec::new();
    loop {
        let mut fds = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fds` is one valid pollfd for the call.
        let ready = unsafe { libc::poll(&mut fds, 1, 1000) };
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(vmm_pid, 0) } != 0 {
            return;
        }
        if ready <= 0 || fds.revents & libc::POLLIN == 0 {
            continue;
        }
        let mut msg = [0u8; MSG_LEN];
        // SAFETY: reads at most MSG_LEN bytes into `msg`.
        let n = unsafe { libc::read(uffd.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_LEN) };
        if n != MSG_LEN as isize {
            continue;
        }
        let word = |at: usize| {
            let bytes = msg.get(at..at + 8).and_then(|b| b.try_into().ok());
            u64::from_le_bytes(bytes.unwrap_or_default())
        };
        match msg.first().copied().unwrap_or_default() {
            UFFD_EVENT_PAGEFAULT => {
                let addr = word(16);
                let zeroed = removed.iter().any(|&(s, e)| addr >= s && addr < e);
                serve(&uffd, &regions, &backing, addr, zeroed);
            }
            UFFD_EVENT_REMOVE => removed.push((word(8), word(16))),
            _ => {}
        }
    }
}

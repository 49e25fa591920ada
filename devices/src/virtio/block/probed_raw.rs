//! A raw image that was recognised as raw only by probing (the user named no format): the guest
//! may not write a header of another image format into its first sector.
//!
//! Without this a guest could write a qcow2 header naming a host file as backing file into its
//! own disk; the next open (a reboot, `PATCH /drives`) would probe the disk as qcow2 and hand the
//! guest that file's contents. QEMU (`raw_probe_first_sector`) and Cloud Hypervisor refuse such
//! writes the same way. The list holds every magic QEMU's probing knows in the first sector, not
//! only qcow2's, so that no other tool that probes the image is fooled either. A drive whose
//! format the user named as raw is not guarded: there nothing is probed.

use std::io;

use super::disk::DiskBackend;

/// The part of the image a probe looks at, and so the part that is guarded.
const PROBED_LEN: usize = 512;

/// (format, offset in the first sector, magic) for each format recognised by its first sector.
const MAGICS: &[(&str, usize, &[u8])] = &[
    ("qcow/qcow2", 0, b"QFI\xfb"),
    ("QED", 0, b"QED\0"),
    ("VMDK", 0, b"KDMV"),
    ("VMDK3", 0, b"COWD"),
    ("VMDK descriptor", 0, b"# Disk DescriptorFile"),
    ("VDI", 0x40, &0xbeda_107f_u32.to_le_bytes()),
    ("VHDX", 0, b"vhdxfile"),
    ("VHD", 0, b"conectix"),
    ("LUKS", 0, b"LUKS\xba\xbe"),
    ("Bochs", 0, b"Bochs Virtual HD Image"),
    ("Parallels", 0, b"WithoutFreeSpace"),
    ("Parallels", 0, b"WithouFreSpacExt"),
    (
        "cloop",
        0,
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0",
    ),
];

/// The format whose magic `first` (the start of an image) carries, if any.
pub fn format_magic(first: &[u8]) -> Option<&'static str> {
    MAGICS.iter().find_map(|&(format, offset, magic)| {
        let end = offset.checked_add(magic.len())?;
        (first.get(offset..end) == Some(magic)).then_some(format)
    })
}

/// A raw disk that refuses writes giving its first sector another format's magic.
#[derive(Debug)]
pub struct ProbedRaw<D> {
    inner: D,
    sector: Vec<u8>,
}

impl<D: DiskBackend> ProbedRaw<D> {
    /// Guards `inner`, an image probed as raw.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            sector: Vec::with_capacity(PROBED_LEN),
        }
    }
}

impl<D: DiskBackend> DiskBackend for ProbedRaw<D> {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Only a write that starts in the probed sector can change it.
        if let Some(start) = usize::try_from(offset).ok().filter(|&o| o < PROBED_LEN) {
            // What the sector would hold after the write: the write over the current bytes.
            let disk_len = usize::try_from(self.inner.len()).unwrap_or(usize::MAX);
            self.sector.resize(PROBED_LEN.min(disk_len), 0);
            self.inner.read_at(&mut self.sector, 0)?;
            if let Some(target) = self.sector.get_mut(start..) {
                let n = target.len().min(buf.len());
                if let (Some(target), Some(src)) = (target.get_mut(..n), buf.get(..n)) {
                    target.copy_from_slice(src);
                }
            }
            if let Some(format) = format_magic(&self.sector) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "refused a write that would give the image probed as raw a {format} \
                         header"
                    ),
                ));
            }
        }
        self.inner.write_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::MemDisk;

    fn guarded() -> (ProbedRaw<MemDisk>, MemDisk) {
        let disk = MemDisk::new(vec![0u8; 2048]);
        (ProbedRaw::new(disk.clone()), disk)
    }

    #[test]
    fn every_magic_in_the_first_sector_is_refused() {
        for &(format, offset, magic) in MAGICS {
            let (mut raw, disk) = guarded();
            let mut sector = vec![0u8; 512];
            sector[offset..offset + magic.len()].copy_from_slice(magic);
            let err = raw.write_at(&sector, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{format}");
            assert!(err.to_string().contains(format), "{err}");
            assert_eq!(disk.contents(), vec![0u8; 2048], "{format}");
        }
    }

    #[test]
    fn a_write_completing_a_magic_already_half_there_is_refused() {
        let (mut raw, disk) = guarded();
        raw.write_at(b"QF", 0).unwrap();
        let err = raw.write_at(b"I\xfb", 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(&disk.contents()[..4], b"QF\0\0");
        // The VDI signature sits at 0x40: a write from 0x3e reaches it.
        let mut piece = vec![0u8; 6];
        piece[2..].copy_from_slice(&0xbeda_107f_u32.to_le_bytes());
        assert!(raw.write_at(&piece, 0x3e).is_err());
    }

    #[test]
    fn other_writes_go_through() {
        let (mut raw, disk) = guarded();
        // A magic outside the first sector, and ordinary data in it.
        raw.write_at(b"QFI\xfb", 512).unwrap();
        raw.write_at(b"\xeb\x63\x90MSDOS5.0", 0).unwrap();
        raw.write_at(b"QFI", 0).unwrap();
        let contents = disk.contents();
        assert_eq!(&contents[512..516], b"QFI\xfb");
        assert_eq!(&contents[..4], b"QFIM");
    }

    #[test]
    fn a_disk_shorter_than_a_sector_is_guarded_too() {
        let disk = MemDisk::new(vec![0u8; 8]);
        let mut raw = ProbedRaw::new(disk.clone());
        assert!(raw.write_at(b"QFI\xfb", 0).is_err());
        raw.write_at(b"kiln", 0).unwrap();
        assert_eq!(&disk.contents()[..4], b"kiln");
    }
}

//! Tells whether the exec file can run inside the jail: the jail holds no dynamic loader and
//! no shared libraries, so a binary that names an interpreter (`PT_INTERP`) would fail there
//! with a bare ENOENT from execve, after the jail was built. Checking first turns that into a
//! clear refusal before anything is created.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const PT_INTERP: u32 = 3;
/// The ELF header fields read here, all within the 64-byte ELF64 header.
const E_PHOFF: usize = 0x20;
const E_PHENTSIZE: usize = 0x36;
const E_PHNUM: usize = 0x38;
/// More program headers than this is no real executable.
const MAX_PHNUM: u16 = 256;

/// Why the exec file cannot run in the jail.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("Failed to read --exec-file '{path}': {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("--exec-file '{0}' is not a 64-bit little-endian ELF executable.")]
    NotElf(PathBuf),
    #[error(
        "--exec-file '{path}' is dynamically linked (it needs {interpreter}), and the jail has \
         no dynamic loader; use the static build (resources/build-static.sh)."
    )]
    Dynamic { path: PathBuf, interpreter: String },
}

/// Checks that `path` is an ELF64 little-endian executable without an interpreter.
pub fn check_static(path: &Path) -> Result<(), ElfError> {
    let read_err = |source| ElfError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut header = [0u8; 64];
    if file.read_exact(&mut header).is_err() || !header.starts_with(b"\x7fELF\x02\x01") {
        return Err(ElfError::NotElf(path.to_path_buf()));
    }
    let phoff = u64::from_le_bytes(field(&header, E_PHOFF));
    let phentsize = u16::from_le_bytes(field(&header, E_PHENTSIZE));
    let phnum = u16::from_le_bytes(field(&header, E_PHNUM));
    if phentsize < 56 || phnum > MAX_PHNUM {
        return Err(ElfError::NotElf(path.to_path_buf()));
    }
    let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
    file.seek(SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|_| ElfError::NotElf(path.to_path_buf()))?;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        if u32::from_le_bytes(field(entry, 0)) == PT_INTERP {
            let offset = u64::from_le_bytes(field(entry, 8));
            let size = u64::from_le_bytes(field(entry, 32)).min(4096);
            let mut name = vec![0u8; usize::try_from(size).unwrap_or(0)];
            let interpreter = match file
                .seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut name))
            {
                Ok(()) => String::from_utf8_lossy(&name)
                    .trim_end_matches('\0')
                    .to_string(),
                Err(_) => "an interpreter".to_string(),
            };
            return Err(ElfError::Dynamic {
                path: path.to_path_buf(),
                interpreter,
            });
        }
    }
    Ok(())
}

/// `N` bytes at `offset` of `bytes`, zeros where `bytes` is too short (callers check sizes).
fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(offset..offset + N) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(interp: Option<&str>) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[E_PHOFF..E_PHOFF + 8].copy_from_slice(&64u64.to_le_bytes());
        e[E_PHENTSIZE..E_PHENTSIZE + 2].copy_from_slice(&56u16.to_le_bytes());
        e[E_PHNUM..E_PHNUM + 2].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        let p_type: u32 = if interp.is_some() { PT_INTERP } else { 1 };
        ph[..4].copy_from_slice(&p_type.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        let name = interp.unwrap_or("");
        ph[32..40].copy_from_slice(&(name.len() as u64 + 1).to_le_bytes());
        e.extend(ph);
        e.extend(name.as_bytes());
        e.push(0);
        e
    }

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("kiln-jailer-elf-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_binary_without_interpreter_is_static() {
        let path = write("static", &elf(None));
        check_static(&path).unwrap();
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_binary_with_an_interpreter_is_refused_by_name() {
        let path = write("dynamic", &elf(Some("/lib64/ld-linux-x86-64.so.2")));
        let err = check_static(&path).unwrap_err().to_string();
        std::fs::remove_file(path).unwrap();
        assert!(err.contains("needs /lib64/ld-linux-x86-64.so.2"), "{err}");
    }

    #[test]
    fn a_script_is_not_elf() {
        let path = write("script", b"#!/bin/sh\necho hi\n");
        let err = check_static(&path).unwrap_err();
        std::fs::remove_file(path).unwrap();
        assert!(matches!(err, ElfError::NotElf(_)), "{err}");
    }

    #[test]
    fn the_unit_test_binary_is_dynamic() {
        // Unit tests are never built with crt-static (proc-macros cannot be), so they name the
        // glibc loader.
        let me = std::env::current_exe().unwrap();
        assert!(matches!(check_static(&me), Err(ElfError::Dynamic { .. })));
    }
}

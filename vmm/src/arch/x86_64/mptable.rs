//! The Intel MultiProcessor table, which is how a guest without ACPI learns its CPUs, its IOAPIC
//! and how ISA interrupts are routed. It lives at the start of the EBDA, where Linux scans for it.

use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout::{IOAPIC_START, MPTABLE_START};

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// More CPUs than the table format and the EBDA allow.
    #[error("The MP table cannot describe {0} CPUs.")]
    TooManyCpus(u8),
    /// The table does not fit in guest memory.
    #[error("Failed to write the MP table to guest memory: {0}")]
    Write(#[from] GuestMemoryError),
}

/// The most CPUs the table describes (the IOAPIC takes the next APIC ID).
pub const MAX_CPUS: u8 = 254;
/// Interrupt lines routed through the IOAPIC.
const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x1;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    specification: u8,
    checksum: u8,
    feature: [u8; 5],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    oemcount: u16,
    lapic: u32,
    reserved: u32,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// An interrupt source entry; the same layout serves IOAPIC and local-APIC sources.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

// SAFETY: all of these are packed structs of plain integers and byte arrays: every bit pattern
// is a valid value and there is no padding.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIntsrc {}

/// Makes the sum of all bytes of `bytes` zero by choosing the byte at `checksum_at`.
fn fix_checksum(bytes: &mut [u8], checksum_at: usize) {
    if let Some(slot) = bytes.get_mut(checksum_at) {
        *slot = 0;
    }
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    if let Some(slot) = bytes.get_mut(checksum_at) {
        *slot = sum.wrapping_neg();
    }
}

/// The table's bytes for `num_cpus` CPUs: the floating pointer, then the configuration table.
fn build(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries = Vec::new();
    for cpu in 0..num_cpus {
        let boot = if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(
            MpcCpu {
                type_: ENTRY_PROCESSOR,
                apicid: cpu,
                apicver: APIC_VERSION,
                cpuflag: CPU_ENABLED | boot,
                cpufeature: CPU_STEPPING,
                featureflag: CPU_FEATURE_APIC | CPU_FEATURE_FPU,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    entries.extend_from_slice(
        MpcBus {
            type_: ENTRY_BUS,
            busid: ISA_BUS_ID,
            bustype: *b"ISA   ",
        }
        .as_slice(),
    );
    entries.extend_from_slice(
        MpcIoapic {
            type_: ENTRY_IOAPIC,
            apicid: ioapic_id,
            apicver: IOAPIC_VERSION,
            flags: 1,
            apicaddr: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(
            MpcIntsrc {
                type_: ENTRY_INTSRC,
                irqtype: INT_TYPE_INT,
                srcbus: ISA_BUS_ID,
                srcbusirq: pin,
                dstapic: ioapic_id,
                dstirq: pin,
                ..Default::default()
            }
            .as_slice(),
        );
    }
    for (irqtype, dstapic, lint) in [(INT_TYPE_EXTINT, 0, 0), (INT_TYPE_NMI, ALL_LOCAL_APICS, 1)] {
        entries.extend_from_slice(
            MpcIntsrc {
                type_: ENTRY_LINTSRC,
                irqtype,
                srcbus: ISA_BUS_ID,
                dstapic,
                dstirq: lint,
                ..Default::default()
            }
            .as_slice(),
        );
    }

    let mpf_size = std::mem::size_of::<MpfIntel>();
    let header_size = std::mem::size_of::<MpcTable>();
    let table_len = u16::try_from(header_size + entries.len())
        .map_err(|_| MptableError::TooManyCpus(num_cpus))?;
    let mut table = MpcTable {
        signature: *b"PCMP",
        length: table_len,
        spec: 4,
        oem: *b"KILN    ",
        productid: *b"000000000000",
        lapic: super::layout::APIC_START as u32,
        ..Default::default()
    }
    .as_slice()
    .to_vec();
    table.extend_from_slice(&entries);
    fix_checksum(&mut table, std::mem::offset_of!(MpcTable, checksum));

    let mut mpf = MpfIntel {
        signature: *b"_MP_",
        physptr: (MPTABLE_START + mpf_size as u64) as u32,
        length: 1,
        specification: 4,
        ..Default::default()
    }
    .as_slice()
    .to_vec();
    fix_checksum(&mut mpf, std::mem::offset_of!(MpfIntel, checksum));
    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the MP table for `num_cpus` CPUs at [`MPTABLE_START`].
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        let mem = mem();
        setup_mptable(&mem, 2).unwrap();
        let mpf: MpfIntel = mem.read_obj(GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&mpf.signature, b"_MP_");
        assert_eq!(sum(mpf.as_slice()), 0);
        let physptr = mpf.physptr;
        let table: MpcTable = mem.read_obj(GuestAddress(u64::from(physptr))).unwrap();
        assert_eq!(&table.signature, b"PCMP");
        let mut whole = vec![0u8; usize::from(table.length)];
        mem.read_slice(&mut whole, GuestAddress(u64::from(physptr)))
            .unwrap();
        assert_eq!(sum(&whole), 0);
    }

    #[test]
    fn lists_every_cpu_with_one_boot_processor() {
        for n in [1u8, 2, 32] {
            let bytes = build(n).unwrap();
            let entries = &bytes[16 + 44..];
            let cpus: Vec<MpcCpu> = entries
                .chunks(20)
                .take(usize::from(n))
                .map(|c| *MpcCpu::from_slice(c).unwrap())
                .collect();
            assert!(cpus.iter().all(|c| c.type_ == ENTRY_PROCESSOR));
            let ids: Vec<u8> = cpus.iter().map(|c| c.apicid).collect();
            assert_eq!(ids, (0..n).collect::<Vec<_>>());
            let boot: Vec<u8> = cpus
                .iter()
                .filter(|c| c.cpuflag & CPU_BOOT_PROCESSOR != 0)
                .map(|c| c.apicid)
                .collect();
            assert_eq!(boot, vec![0]);
            let ioapic = MpcIoapic::from_slice(&entries[20 * usize::from(n) + 8..][..8]).unwrap();
            assert_eq!(ioapic.type_, ENTRY_IOAPIC);
            assert_eq!(ioapic.apicid, n + 1);
        }
    }

    #[test]
    fn fits_in_the_ebda_with_32_cpus() {
        assert!(build(32).unwrap().len() <= 1024);
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert!(matches!(build(0), Err(MptableError::TooManyCpus(0))));
        assert!(matches!(build(255), Err(MptableError::TooManyCpus(255))));
        let tiny: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&tiny, 1),
            Err(MptableError::Write(_))
        ));
    }
}

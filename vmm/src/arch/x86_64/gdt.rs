//! The boot GDT: flat segments for the 64-bit Linux entry and for the 32-bit PVH entry.

use kvm_bindings::kvm_segment;

/// Builds a GDT entry from flags, base and limit, in the CPU's scattered layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The hidden part of a segment register loaded from `entry` at GDT index `table_index`.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let flag = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: {
            let raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
            // With the granularity bit the limit counts 4 KiB pages.
            if flag(55, 1) == 1 {
                (raw << 12) | 0xfff
            } else {
                raw
            }
        },
        selector: u16::from(table_index) * 8,
        type_: flag(40, 0xf),
        present: flag(47, 1),
        dpl: flag(45, 0x3),
        db: flag(54, 1),
        s: flag(44, 1),
        l: flag(53, 1),
        g: flag(55, 1),
        avl: flag(52, 1),
        padding: 0,
        unusable: u8::from(flag(47, 1) == 0),
    }
}

/// GDT for the 64-bit Linux entry: null, 64-bit code, data, TSS.
pub const GDT_64BIT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT for the PVH entry (32-bit protected mode, paging off): null, 32-bit code, data, TSS.
pub const GDT_PVH: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_flat_64bit_code_segment() {
        let seg = kvm_segment_from_gdt(GDT_64BIT[1], 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(
            (seg.l, seg.db, seg.present, seg.s, seg.type_),
            (1, 0, 1, 1, 0xb)
        );
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn encodes_a_32bit_segment_with_base() {
        let entry = gdt_entry(0xc093, 0x1234_5678, 0xfffff);
        let seg = kvm_segment_from_gdt(entry, 2);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!((seg.db, seg.l, seg.g, seg.type_), (1, 0, 1, 3));
        assert_eq!(seg.selector, 0x10);
    }

    #[test]
    fn null_segment_is_unusable() {
        assert_eq!(kvm_segment_from_gdt(GDT_64BIT[0], 0).unusable, 1);
    }
}

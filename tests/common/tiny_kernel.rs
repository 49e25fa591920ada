//! A tiny ELF "kernel" assembled by hand: a few instructions that write to the serial port and
//! then end the VM in a chosen way. It exercises kiln's real KVM path (memory, registers, page
//! tables, GDT, serial, i8042, boot timer) in milliseconds, even on hosts where a Linux guest
//! cannot run.
//!
//! The instructions used encode identically in 32-bit protected mode and 64-bit long mode, so
//! the same code serves the PVH entry (32-bit) and the 64-bit Linux entry.

/// Where the image is loaded, like a real vmlinux.
pub const LOAD_ADDR: u64 = 0x100_0000;
/// Offset of the PVH entry inside the image.
const PVH_ENTRY_OFFSET: u64 = 0x800;

/// How the tiny guest ends.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// Waits for one byte on COM1, prints `GOT:<byte>`, then resets through the i8042.
    EchoThenReset,
    /// Writes 0xFE to the i8042 command port, as Linux's `reboot=k`.
    I8042Reset,
    /// Executes ud2 with an empty IDT: a triple fault, as Linux's `reboot=t`.
    TripleFault,
    /// Halts with interrupts off: the VM runs until the VMM stops it.
    HaltForever,
    /// Writes `X` to COM1 without end, not waiting for the UART.
    PrintForever,
    /// Prints `CPUID1.ECX=<8 hex digits>` (CPUID leaf 1's ECX, the feature flags a CPU
    /// template changes), then resets through the i8042.
    CpuidThenReset,
    /// Counts in RBX without end, storing each value at [`COUNTER_ADDR`]: memory and a
    /// register that a snapshot must carry. 64-bit entry only (the store's encoding).
    CountForever,
}

/// Where [`Ending::CountForever`] keeps its count, a free page below the command line.
pub const COUNTER_ADDR: u64 = 0x5_0000;

/// Code that prints CPUID leaf 1's ECX as `CPUID1.ECX=xxxxxxxx\n`.
fn print_cpuid_ecx() -> Vec<u8> {
    let mut code = print("CPUID1.ECX=");
    code.extend_from_slice(&[
        0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x31, 0xc9, // xor ecx, ecx
        0x0f, 0xa2, // cpuid
        0x89, 0xcb, // mov ebx, ecx
        0xb9, 0x08, 0x00, 0x00, 0x00, // mov ecx, 8 (digits)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xc1, 0xc3, 0x04, // 1: rol ebx, 4 (the next digit into the low nibble)
        0x88, 0xd8, // mov al, bl
        0x24, 0x0f, // and al, 0xf
        0x04, 0x30, // add al, '0'
        0x3c, 0x3a, // cmp al, '9' + 1
        0x72, 0x02, // jb 2f
        0x04, 0x27, // add al, 'a' - '9' - 1
        0xee, // 2: out dx, al
        0xff, 0xc9, // dec ecx (not 0x49, a REX prefix in long mode)
        0x75, 0xec, // jnz 1b
    ]);
    code.extend(print("\n"));
    code
}

/// Code that prints `text` on COM1.
fn print(text: &str) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in text.bytes() {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code
}

/// Code that polls the line status register until a byte arrives and leaves it in BL.
fn read_byte() -> Vec<u8> {
    vec![
        0x66, 0xba, 0xfd, 0x03, // mov dx, 0x3fd (line status)
        0xec, // 1: in al, dx
        0xa8, 0x01, // test al, 1 (data ready)
        0x74, 0xfb, // jz 1b
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xec, // in al, dx
        0x88, 0xc3, // mov bl, al
    ]
}

fn ending(ending: Ending) -> Vec<u8> {
    const RESET: [u8; 7] = [0x66, 0xba, 0x64, 0x00, 0xb0, 0xfe, 0xee];
    let mut code = match ending {
        Ending::EchoThenReset => {
            let mut code = read_byte();
            code.extend(print("GOT:"));
            code.extend_from_slice(&[0x88, 0xd8, 0xee]); // mov al, bl; out dx, al
            code.extend(print("\n"));
            code.extend_from_slice(&RESET);
            code
        }
        Ending::I8042Reset => RESET.to_vec(),
        Ending::CpuidThenReset => {
            let mut code = print_cpuid_ecx();
            code.extend_from_slice(&RESET);
            code
        }
        Ending::TripleFault => vec![0x0f, 0x0b],
        Ending::HaltForever => vec![0xfa], // cli
        Ending::CountForever => vec![
            0x31, 0xdb, // xor ebx, ebx
            0x48, 0xff, 0xc3, // 1: inc rbx
            0x48, 0x89, 0x1c, 0x25, 0x00, 0x00, 0x05, 0x00, // mov [COUNTER_ADDR], rbx
            0xeb, 0xf3, // jmp 1b
        ],
        Ending::PrintForever => {
            let mut code = vec![0x66, 0xba, 0xf8, 0x03, 0xb0, b'X']; // mov dx, 0x3f8; mov al, 'X'
            code.extend_from_slice(&[0xee, 0xeb, 0xfd]); // 1: out dx, al; jmp 1b
            code
        }
    };
    code.extend_from_slice(&[0xf4, 0xeb, 0xfd]); // 1: hlt; jmp 1b
    code
}

/// Writes the boot-timer magic to 0xc000_0000 with an absolute address (PVH only: paging is
/// off, and in 64-bit mode this encoding is RIP-relative).
fn boot_timer_write() -> Vec<u8> {
    vec![0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, 123]
}

/// Builds the ELF. `pvh` adds the Xen PVH note, whose entry prints `PVH` and writes the boot
/// timer; the ELF entry prints `LINUX64`. Both then print `TINY-DONE` and end as asked.
pub fn build(pvh: bool, end: Ending) -> Vec<u8> {
    let mut linux64 = print("KILN-TINY entry=LINUX64\n");
    linux64.extend(print("TINY-DONE\n"));
    linux64.extend(ending(end));
    let mut pvh_code = print("KILN-TINY entry=PVH\n");
    pvh_code.extend(boot_timer_write());
    pvh_code.extend(print("TINY-DONE\n"));
    pvh_code.extend(ending(end));

    let mut image = vec![0u8; 0x1000];
    image[..linux64.len()].copy_from_slice(&linux64);
    let pvh_at = PVH_ENTRY_OFFSET as usize;
    image[pvh_at..pvh_at + pvh_code.len()].copy_from_slice(&pvh_code);

    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&((LOAD_ADDR + PVH_ENTRY_OFFSET) as u32).to_le_bytes());

    let phnum: u16 = if pvh { 2 } else { 1 };
    let code_offset = 0x1000u64;
    let note_offset = code_offset + image.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&56u16.to_le_bytes());
    elf.extend_from_slice(&phnum.to_le_bytes());
    elf.extend_from_slice(&64u16.to_le_bytes());
    elf.extend_from_slice(&0u16.to_le_bytes());
    elf.extend_from_slice(&0u16.to_le_bytes());

    let phdr = |p_type: u32, offset: u64, addr: u64, size: u64| {
        let mut h = Vec::new();
        h.extend_from_slice(&p_type.to_le_bytes());
        h.extend_from_slice(&5u32.to_le_bytes()); // R+X
        h.extend_from_slice(&offset.to_le_bytes());
        // Like a real vmlinux, the virtual address differs from the physical one.
        h.extend_from_slice(&(addr | 0xffff_ffff_8000_0000).to_le_bytes());
        h.extend_from_slice(&addr.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&0x1000u64.to_le_bytes());
        h
    };
    elf.extend(phdr(1, code_offset, LOAD_ADDR, image.len() as u64));
    if pvh {
        elf.extend(phdr(4, note_offset, 0, note.len() as u64));
    }
    elf.resize(code_offset as usize, 0);
    elf.extend_from_slice(&image);
    elf.extend_from_slice(&note);
    elf
}

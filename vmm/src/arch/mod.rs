//! Architecture support. Kiln runs on x86_64 only.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("Kiln supports only x86_64 hosts.");

pub mod x86_64;

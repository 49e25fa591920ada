//! The two value syntaxes of Firecracker's template JSON: a register bitmap (`"0b10x1..."`,
//! `x` for a bit left unchanged) and a number that names its base (`"0x1f"` or `"0b11111"`).
//!
//! Both parse exactly as Firecracker 1.16's `templates.rs` and `templates_serde.rs` do, with its
//! error messages, so that a template Firecracker refuses is refused here with the same words.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A register's width: the unsigned integers a bitmap can modify.
pub trait Register: Copy + Default + PartialEq + std::fmt::Debug {
    /// Number of bits.
    const BITS: u32;
    /// The value with only bit `pos` set.
    fn bit(pos: u32) -> Self;
    /// `self | other`.
    fn or(self, other: Self) -> Self;
    /// `(self & !filter) | value`.
    fn masked(self, filter: Self, value: Self) -> Self;
}

macro_rules! register {
    ($type:ty) => {
        impl Register for $type {
            const BITS: u32 = <$type>::BITS;
            fn bit(pos: u32) -> Self {
                1 << pos
            }
            fn or(self, other: Self) -> Self {
                self | other
            }
            fn masked(self, filter: Self, value: Self) -> Self {
                (self & !filter) | value
            }
        }
    };
}

register!(u32);
register!(u64);

/// Which bits of a register to set and to what: `filter` has the bits the template names,
/// `value` their new values.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bitmap<V> {
    /// The bits to change.
    pub filter: V,
    /// What they become.
    pub value: V,
}

impl<V: Register> Bitmap<V> {
    /// `register` with the named bits changed and the others kept.
    pub fn apply(&self, register: V) -> V {
        register.masked(self.filter, self.value)
    }

    /// Parses `"0b0_1x1"`: bit 0 is the last character; `_` separates, `x` keeps, and a string
    /// shorter than the register keeps the high bits. The `0b` prefix is optional.
    pub fn parse(text: &str) -> Result<Self, String> {
        let digits = text.strip_prefix("0b").unwrap_or(text);
        let mut bitmap = Self::default();
        let mut pos = 0;
        // Bytes, not characters, as Firecracker reads them: a multi-byte character is reported
        // by the value of its last byte.
        for &byte in digits.as_bytes().iter().rev() {
            if pos == V::BITS {
                return Err(format!(
                    "Failed to parse string [{text}] as a bitmap - string is too long"
                ));
            }
            match byte {
                b'_' => continue,
                b'x' => {}
                b'0' => bitmap.filter = bitmap.filter.or(V::bit(pos)),
                b'1' => {
                    bitmap.filter = bitmap.filter.or(V::bit(pos));
                    bitmap.value = bitmap.value.or(V::bit(pos));
                }
                other => {
                    return Err(format!(
                        "Failed to parse string [{text}] as a bitmap - unknown character: {other}"
                    ))
                }
            }
            pos += 1;
        }
        Ok(bitmap)
    }
}

impl<'de, V: Register> Deserialize<'de> for Bitmap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(D::Error::custom)
    }
}

/// A number in a string that names its base, as Firecracker writes leaves, subleaves and MSR
/// addresses: `0x` hexadecimal or `0b` binary. A bare decimal is refused.
pub fn parse_number(text: &str) -> Result<u32, String> {
    let parsed = if let Some(hex) = text.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if let Some(binary) = text.strip_prefix("0b") {
        u32::from_str_radix(binary, 2)
    } else {
        return Err(format!(
            "No supported number system prefix found in value [{text}]. Make sure to prefix the \
             number with '0x' for hexadecimal numbers or '0b' for binary numbers."
        ));
    };
    parsed.map_err(|err| {
        format!("Failed to parse string [{text}] as a number for CPU template - {err:?}")
    })
}

/// Deserialises a field written as [`parse_number`] reads it.
pub fn deserialize_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_number(&text).map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_names_the_bits_it_changes() {
        let b = Bitmap::<u32>::parse("0b0_101_xx_xx").unwrap();
        assert_eq!((b.filter, b.value), (0b1111_0000, 0b0101_0000));
        assert_eq!(b.apply(0xffff_ff0f), 0xffff_ff5f);
        // Without the prefix, and shorter than the register: the high bits are kept.
        let b = Bitmap::<u64>::parse("1x0").unwrap();
        assert_eq!((b.filter, b.value), (0b101, 0b100));
        assert_eq!(b.apply(u64::MAX), u64::MAX - 1);
        assert_eq!(Bitmap::<u32>::parse("").unwrap(), Bitmap::default());
        assert_eq!(Bitmap::<u32>::parse("0b").unwrap(), Bitmap::default());
        let full = format!("0b{}", "1".repeat(32));
        assert_eq!(Bitmap::<u32>::parse(&full).unwrap().filter, u32::MAX);
        // A separator after the last bit is skipped before the length is checked.
        assert!(Bitmap::<u32>::parse(&format!("{full}_")).is_ok());
    }

    #[test]
    fn a_bad_bitmap_is_refused_with_firecrackers_words() {
        let long = format!("0b{}", "1".repeat(33));
        assert_eq!(
            Bitmap::<u32>::parse(&long).unwrap_err(),
            format!("Failed to parse string [{long}] as a bitmap - string is too long")
        );
        assert!(Bitmap::<u64>::parse(&format!("0b{}", "x".repeat(64))).is_ok());
        assert!(Bitmap::<u64>::parse(&format!("0b{}", "x".repeat(65))).is_err());
        // A separator past the register's width counts as too long.
        assert!(Bitmap::<u32>::parse(&format!("0b_{}", "1".repeat(32))).is_err());
        assert_eq!(
            Bitmap::<u32>::parse("0b1x2").unwrap_err(),
            "Failed to parse string [0b1x2] as a bitmap - unknown character: 50"
        );
        assert_eq!(
            Bitmap::<u32>::parse("0bé").unwrap_err(),
            "Failed to parse string [0bé] as a bitmap - unknown character: 169"
        );
        assert!(Bitmap::<u32>::parse("0B1").is_err());
    }

    #[test]
    fn numbers_name_their_base() {
        assert_eq!(parse_number("0x0045"), Ok(69));
        assert_eq!(parse_number("0b1000101"), Ok(69));
        assert_eq!(parse_number("0x80000001"), Ok(0x8000_0001));
        assert_eq!(
            parse_number("69").unwrap_err(),
            "No supported number system prefix found in value [69]. Make sure to prefix the \
             number with '0x' for hexadecimal numbers or '0b' for binary numbers."
        );
        assert!(parse_number("0X1").is_err());
        assert_eq!(
            parse_number("0x100000000").unwrap_err(),
            "Failed to parse string [0x100000000] as a number for CPU template - \
             ParseIntError { kind: PosOverflow }"
        );
        assert_eq!(
            parse_number("0x").unwrap_err(),
            "Failed to parse string [0x] as a number for CPU template - ParseIntError { kind: \
             Empty }"
        );
        assert!(parse_number("0xZ").unwrap_err().contains("InvalidDigit"));
    }
}

//! The host terminal while it is the guest's console: raw mode, restored on exit.

use vmm_sys_util::terminal::Terminal;

/// Puts the terminal in raw mode for the guest console and restores it on drop.
pub struct RawTerminal;

impl RawTerminal {
    /// Puts stdin in raw mode; `None` (with a warning) if that fails.
    pub fn enable() -> Option<Self> {
        match std::io::stdin().lock().set_raw_mode() {
            Ok(()) => Some(RawTerminal),
            Err(e) => {
                log::warn!("Failed to put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = std::io::stdin().lock().set_canon_mode() {
            log::warn!("Failed to restore the terminal: {e}");
        }
    }
}

//! Read/write interest of one fd, as a tiny bit set that can be empty (mio's cannot).

use std::ops::BitOr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest(u8);

impl Interest {
    pub const NONE: Interest = Interest(0);
    pub const READ: Interest = Interest(1);
    pub const WRITE: Interest = Interest(2);

    pub fn is_readable(self) -> bool {
        self.0 & 1 != 0
    }

    pub fn is_writable(self) -> bool {
        self.0 & 2 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// This interest without `other`.
    pub fn without(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn to_mio(self) -> Option<mio::Interest> {
        match (self.is_readable(), self.is_writable()) {
            (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
            (true, false) => Some(mio::Interest::READABLE),
            (false, true) => Some(mio::Interest::WRITABLE),
            (false, false) => None,
        }
    }
}

impl BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

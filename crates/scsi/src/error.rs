//! Errors of the SCSI parsers and builders.

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Data that a parser cannot accept, or arguments that a builder cannot encode.
///
/// A SCSI command that completes with CHECK CONDITION is not an `Error`: its [`Sense`]
/// is data (see DESIGN.md "Errors").
///
/// [`Sense`]: crate::Sense
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before a field the parser needs.
    #[error("{what} too short: {got} bytes, need {need}")]
    Short {
        /// The structure being parsed.
        what: &'static str,
        /// Bytes the parser needs.
        need: usize,
        /// Bytes it was given.
        got: usize,
    },
    /// The data declares more bytes than the buffer holds (the allocation length was too
    /// small): reissue the command with an allocation length of at least `need`.
    #[error("{what} truncated: it declares {need} bytes, buffer holds {got}")]
    Truncated {
        /// The structure being parsed.
        what: &'static str,
        /// Bytes the data declares (header included).
        need: usize,
        /// Bytes in the buffer.
        got: usize,
    },
    /// A VPD page other than the one asked for came back.
    #[error("vpd page {got:#04x} returned, expected {expected:#04x}")]
    WrongVpdPage {
        /// The page code that was asked for.
        expected: u8,
        /// The page code in the response.
        got: u8,
    },
    /// A designation descriptor of the Device Identification VPD page runs past the
    /// end of the page.
    #[error("designation descriptor at offset {offset} with length {len} overruns page end {end}")]
    DescriptorOverrun {
        /// Offset of the descriptor's header in the page.
        offset: usize,
        /// Its DESIGNATOR LENGTH.
        len: usize,
        /// The end of the page (4 + PAGE LENGTH).
        end: usize,
    },
    /// A part of length-prefixed data (a header, block descriptors, a mode page, a
    /// command descriptor) ends past the end that the data's length field declares:
    /// the data contradicts itself.
    #[error("{what} at offset {offset} with length {len} overruns the declared data end {end}")]
    Overrun {
        /// The part that overruns.
        what: &'static str,
        /// Its offset in the data.
        offset: usize,
        /// Its length in bytes.
        len: usize,
        /// The end of the data that the length field declares.
        end: usize,
    },
    /// A mode page other than the one asked for: `got` is byte 0 of the page without
    /// the PS bit, i.e. SPF (0x40) and PAGE CODE, so a page in sub_page format differs
    /// from the page_0 format page `expected`.
    #[error(
        "mode page byte {got:#04x} (SPF, PAGE CODE), expected page {expected:#04x} in page_0 format"
    )]
    WrongModePage {
        /// The page code asked for.
        expected: u8,
        /// SPF and PAGE CODE of the page given.
        got: u8,
    },
    /// The LUN LIST LENGTH of REPORT LUNS data is not a multiple of 8.
    #[error("lun list length {len} is not a multiple of 8")]
    BadLunListLength {
        /// The LUN LIST LENGTH field.
        len: u32,
    },
    /// The sense data's RESPONSE CODE is neither fixed (0x70/0x71) nor descriptor
    /// (0x72/0x73) format.
    #[error("sense response code {code:#04x} is not 0x70..=0x73")]
    BadSenseResponseCode {
        /// The RESPONSE CODE field.
        code: u8,
    },
    /// READ CAPACITY reported a logical block length of zero.
    #[error("logical block length is zero")]
    ZeroBlockLength,
    /// An UNMAP parameter list cannot hold this many block descriptors.
    #[error("{count} unmap block descriptors, at most {max} fit a parameter list")]
    TooManyUnmapDescriptors {
        /// Descriptors given.
        count: usize,
        /// Descriptors that fit.
        max: usize,
    },
    /// The output buffer of a builder is too small.
    #[error("output buffer holds {got} bytes, need {need}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
}

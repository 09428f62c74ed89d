//! Bounds-checked big-endian readers shared by the parsers.

/// A read past the end of a buffer: `need` bytes were wanted at `offset`
/// but only `len` bytes exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer too short: need {need} bytes at offset {offset}, have {len}")]
pub struct OutOfBounds {
    pub offset: usize,
    pub need: usize,
    pub len: usize,
}

/// Borrow `n` bytes at `offset`, or report how short the buffer is.
pub fn slice(buf: &[u8], offset: usize, n: usize) -> Result<&[u8], OutOfBounds> {
    offset
        .checked_add(n)
        .and_then(|end| buf.get(offset..end))
        .ok_or(OutOfBounds {
            offset,
            need: n,
            len: buf.len(),
        })
}

fn array<const N: usize>(buf: &[u8], offset: usize) -> Result<[u8; N], OutOfBounds> {
    let s = slice(buf, offset, N)?;
    let mut a = [0u8; N];
    a.copy_from_slice(s);
    Ok(a)
}

pub fn be16(buf: &[u8], offset: usize) -> Result<u16, OutOfBounds> {
    array::<2>(buf, offset).map(u16::from_be_bytes)
}

pub fn be32(buf: &[u8], offset: usize) -> Result<u32, OutOfBounds> {
    array::<4>(buf, offset).map(u32::from_be_bytes)
}

pub fn be64(buf: &[u8], offset: usize) -> Result<u64, OutOfBounds> {
    array::<8>(buf, offset).map(u64::from_be_bytes)
}

pub fn is_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

pub fn byte(buf: &[u8], offset: usize) -> Result<u8, OutOfBounds> {
    buf.get(offset).copied().ok_or(OutOfBounds {
        offset,
        need: 1,
        len: buf.len(),
    })
}

//! `ByteStr`: UTF-8 text held in shared `Bytes`, so a read message's topic, id, tag and keys
//! are slices of the record they came from rather than copies.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// Immutable UTF-8 text in shared bytes; cloning and slicing never copy the text.
///
/// **Invariant:** the bytes are valid UTF-8 (checked by every constructor).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteStr(Bytes);

/// Hashes as the `str` it holds (which `Bytes` does not), as `Borrow<str>` requires: a
/// `HashMap<ByteStr, _>` is looked up by `&str`.
impl std::hash::Hash for ByteStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl ByteStr {
    /// Text that lives for the whole program, without an allocation.
    pub const fn from_static(text: &'static str) -> Self {
        ByteStr(Bytes::from_static(text.as_bytes()))
    }

    /// Wraps `bytes` when they are valid UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        if !bytes.is_ascii() {
            std::str::from_utf8(&bytes)?;
        }
        Ok(ByteStr(bytes))
    }

    /// Wraps `bytes` already checked to be UTF-8.
    ///
    /// # Safety
    /// `bytes` must be valid UTF-8.
    pub(crate) unsafe fn from_utf8_unchecked(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok());
        ByteStr(bytes)
    }

    /// A part of this text, shared with it; `part` must be a subslice of `self.as_str()`.
    pub fn slice_ref(&self, part: &str) -> Self {
        ByteStr(self.0.slice_ref(part.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checked the bytes are UTF-8, and they never change.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ByteStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ByteStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl From<String> for ByteStr {
    fn from(text: String) -> Self {
        ByteStr(Bytes::from(text.into_bytes()))
    }
}

impl From<&str> for ByteStr {
    fn from(text: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<ByteStr> for String {
    fn from(text: ByteStr) -> Self {
        text.as_str().to_string()
    }
}

impl PartialEq<str> for ByteStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ByteStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ByteStr {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<ByteStr> for str {
    fn eq(&self, other: &ByteStr) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<ByteStr> for &str {
    fn eq(&self, other: &ByteStr) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<ByteStr> for String {
    fn eq(&self, other: &ByteStr) -> bool {
        self.as_str() == other.as_str()
    }
}

impl serde::Serialize for ByteStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_utf8_and_slices_without_copying() {
        assert!(ByteStr::from_utf8(Bytes::from_static(b"\xff")).is_err());
        let text = ByteStr::from_utf8(Bytes::from_static("topic-é".as_bytes())).unwrap();
        let part = text.slice_ref(&text[6..]);
        assert_eq!(part, "é");
        assert_eq!(part.as_bytes().as_ptr(), text.as_bytes()[6..].as_ptr());
        assert_eq!(String::from(part.clone()), "é");
        assert_eq!(format!("{part:?} {part}"), "\"é\" é");
        let set: std::collections::HashSet<ByteStr> = [part].into_iter().collect();
        assert!(set.contains("é"), "looked up by str");
    }
}

//! Encoding and decoding of commitlog records (layout in the `storage` module doc).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::Bytes;

use crate::byte_str::ByteStr;
use crate::error::{Error, Result};

pub(crate) const MAGIC: u16 = 0xE1E7;
pub(crate) const VERSION: u8 = 1;
pub(crate) const KIND_MESSAGE: u8 = 1;
pub(crate) const KIND_END_OF_SEGMENT: u8 = 2;
/// Bytes before the topic: length .. prepared transaction offset, plus the topic length byte.
pub(crate) const HEADER_FIXED_BYTES: usize = 83;
/// The end-of-segment marker: length, magic, version, kind.
pub(crate) const END_MARKER_BYTES: usize = 8;
/// The smallest possible message record (one-byte topic, no properties, empty body).
pub(crate) const RECORD_BYTES_MIN: usize = HEADER_FIXED_BYTES + 1 + 2 + 4;
/// Longest topic name the format can hold.
pub const TOPIC_BYTES_MAX: usize = 127;
/// Largest encoded properties block the format can hold.
pub const PROPERTIES_BYTES_MAX: usize = 32767;

/// Property holding the message tag.
pub const PROPERTY_TAGS: &str = "TAGS";
/// Property holding the message keys, separated by spaces.
pub const PROPERTY_KEYS: &str = "KEYS";
/// Property holding the unique message id.
pub const PROPERTY_UNIQUE_ID: &str = "UNIQ_KEY";

const _: () = assert!(HEADER_FIXED_BYTES == 83);
const _: () = assert!(RECORD_BYTES_MIN > END_MARKER_BYTES);
const _: () = assert!(TOPIC_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(PROPERTIES_BYTES_MAX <= u16::MAX as usize);

/// A message as handed to the store: the broker has chosen its topic and queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub topic: String,
    pub queue_id: u32,
    pub flags: u32,
    pub born_timestamp_ms: i64,
    pub born_host: SocketAddr,
    pub reconsume_count: u32,
    pub prepared_transaction_offset: u64,
    /// Properties in order; `TAGS`, `KEYS` and `UNIQ_KEY` among them when set.
    pub properties: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl NewMessage {
    /// The record's length in the commitlog.
    pub fn encoded_len(&self) -> usize {
        HEADER_FIXED_BYTES + self.topic.len() + 2 + properties_size(&self.properties) + 4 + self.body.len()
    }

    /// The first property with this name.
    pub fn property(&self, name: &str) -> Option<&str> {
        property(&self.properties, name)
    }

    /// Checks the format's limits; the store calls this before queueing an append.
    pub fn validate(&self, message_size_max_bytes: usize) -> Result<()> {
        if self.topic.is_empty() || self.topic.len() > TOPIC_BYTES_MAX {
            return Err(Error::TopicNameInvalid { name: self.topic.clone(), reason: "must be 1 to 127 bytes" });
        }
        // Topic names become directory names: the store enforces RocketMQ's character set too.
        if !is_name_chars(&self.topic) {
            return Err(Error::TopicNameInvalid {
                name: self.topic.clone(),
                reason: "only letters, digits, `%`, `_` and `-` are allowed",
            });
        }
        for (name, value) in &self.properties {
            if name.is_empty() {
                return Err(Error::PropertyInvalid { name: name.clone(), reason: "empty name" });
            }
            if name.len() > PROPERTIES_BYTES_MAX || value.len() > PROPERTIES_BYTES_MAX {
                return Err(Error::PropertiesTooLarge {
                    size_bytes: name.len() + value.len(),
                    max_bytes: PROPERTIES_BYTES_MAX,
                });
            }
        }
        let properties_bytes = properties_size(&self.properties);
        if properties_bytes > PROPERTIES_BYTES_MAX {
            return Err(Error::PropertiesTooLarge { size_bytes: properties_bytes, max_bytes: PROPERTIES_BYTES_MAX });
        }
        let size_bytes = self.encoded_len();
        if size_bytes > message_size_max_bytes {
            return Err(Error::MessageTooLarge { size_bytes, max_bytes: message_size_max_bytes });
        }
        Ok(())
    }
}

/// RocketMQ's character set for topic and group names (`[A-Za-z0-9%_-]`); topic names also
/// become directory names, so the store enforces it too.
pub fn is_name_chars(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'%' || b == b'_' || b == b'-')
}

/// Encoded size of a properties block.
pub fn properties_size(properties: &[(String, String)]) -> usize {
    properties.iter().map(|(name, value)| 4 + name.len() + value.len()).sum()
}

fn property<'a>(properties: &'a [(String, String)], name: &str) -> Option<&'a str> {
    properties.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// Hash of a tag as stored in consume queue entries; 0 means "no tag".
pub fn tag_hash(tag: Option<&str>) -> u64 {
    match tag {
        None | Some("") => 0,
        Some(tag) => super::fnv1a_64(tag.as_bytes()).max(1),
    }
}

/// A stored message, decoded from the commitlog. Its text and body are slices of the bytes
/// it was decoded from (for a read, the mapped segment), so decoding copies nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: ByteStr,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    /// Length of the record in the commitlog.
    pub size_bytes: u32,
    pub flags: u32,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub born_host: SocketAddr,
    pub reconsume_count: u32,
    pub prepared_transaction_offset: u64,
    pub properties: Properties,
    pub body: Bytes,
}

impl MessageRecord {
    /// The first property with this name.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name)
    }
    /// The message tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.property(PROPERTY_TAGS)
    }
    /// The message keys (space separated in the `KEYS` property).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.property(PROPERTY_KEYS).unwrap_or("").split(' ').filter(|key| !key.is_empty())
    }
    /// The unique message id, if any.
    pub fn unique_id(&self) -> Option<&str> {
        self.property(PROPERTY_UNIQUE_ID)
    }
}

/// A record's properties block as stored: `name length (u16), name, value length (u16),
/// value`, repeated.
///
/// **Invariant:** the block is whole — every length lies inside it — and every name and
/// value is UTF-8 (checked by `parse`, so reading it again cannot fail).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(Bytes);

impl Properties {
    /// Checks a stored block.
    fn parse(block: Bytes) -> Result<Self, String> {
        // Short names and values make an all-ASCII block (lengths under 128 included): then
        // one check covers every text in it.
        let ascii = block.is_ascii();
        let mut reader = Reader { buf: &block, pos: 0 };
        while reader.pos < block.len() {
            for _ in 0..2 {
                let overrun = |_| "a property overruns the properties block".to_string();
                let len = reader.u16().map_err(overrun)? as usize;
                let text = reader.bytes(len).map_err(overrun)?;
                if !ascii {
                    std::str::from_utf8(text).map_err(|_| "property is not UTF-8".to_string())?;
                }
            }
        }
        Ok(Properties(block))
    }

    /// Name and value of every property, in stored order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut position = 0;
        std::iter::from_fn(move || {
            if position >= self.0.len() {
                return None;
            }
            let mut next_text = || {
                let len = u16::from_le_bytes([self.0[position], self.0[position + 1]]) as usize;
                let text = &self.0[position + 2..position + 2 + len];
                position += 2 + len;
                // SAFETY: `parse` checked every name and value is UTF-8; the bytes never change.
                unsafe { std::str::from_utf8_unchecked(text) }
            };
            let name = next_text();
            Some((name, next_text()))
        })
    }

    /// The first value of property `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(key, _)| *key == name).map(|(_, value)| value)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` (a name or value from `iter`) as a `ByteStr` sharing this block's bytes.
    pub fn share(&self, text: &str) -> ByteStr {
        // SAFETY: `text` is a `str` inside the block, so the slice is the same UTF-8 bytes.
        unsafe { ByteStr::from_utf8_unchecked(self.0.slice_ref(text.as_bytes())) }
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Where a message's placement in the log is decided by the writer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub store_timestamp_ms: i64,
}

/// Writes `message` into `out` (exactly `message.encoded_len()` bytes), CRC included.
pub(crate) fn encode_into(message: &NewMessage, placement: Placement, out: &mut [u8]) {
    let total = message.encoded_len();
    assert_eq!(out.len(), total, "record buffer must match the encoded length");
    let mut cursor = Cursor { buf: out, pos: 0 };
    cursor.put_u32(total as u32);
    cursor.put_u16(MAGIC);
    cursor.put_u8(VERSION);
    cursor.put_u8(KIND_MESSAGE);
    cursor.put_u32(0); // CRC, filled below
    cursor.put_u32(message.flags);
    cursor.put_u32(message.queue_id);
    cursor.put_u64(placement.queue_offset);
    cursor.put_u64(placement.physical_offset);
    cursor.put_u64(message.born_timestamp_ms as u64);
    cursor.put_u64(placement.store_timestamp_ms as u64);
    let ip = match message.born_host.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    cursor.put_bytes(&ip.octets());
    cursor.put_u16(message.born_host.port());
    cursor.put_u32(message.reconsume_count);
    cursor.put_u64(message.prepared_transaction_offset);
    cursor.put_u8(message.topic.len() as u8);
    cursor.put_bytes(message.topic.as_bytes());
    cursor.put_u16(properties_size(&message.properties) as u16);
    for (name, value) in &message.properties {
        cursor.put_u16(name.len() as u16);
        cursor.put_bytes(name.as_bytes());
        cursor.put_u16(value.len() as u16);
        cursor.put_bytes(value.as_bytes());
    }
    cursor.put_u32(message.body.len() as u32);
    cursor.put_bytes(&message.body);
    assert_eq!(cursor.pos, total, "encoder wrote a different length than it computed");
    let crc = crc32c(&out[12..]);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Writes an end-of-segment marker of `len` bytes (only the first 8 are touched).
pub(crate) fn encode_end_marker(len: u32, out: &mut [u8]) {
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..6].copy_from_slice(&MAGIC.to_le_bytes());
    out[6] = VERSION;
    out[7] = KIND_END_OF_SEGMENT;
}

/// CRC32C (Castagnoli) of `bytes`.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// What sits at a position of the commitlog.
#[derive(Debug)]
pub(crate) enum Decoded {
    Message(MessageRecord),
    /// End-of-segment marker; the next record starts in the next segment.
    EndOfSegment,
    /// Not a valid record: the end of the log during recovery, corruption anywhere else.
    Invalid(String),
}

/// Reads the record length and kind at the start of `bytes`, validating the frame only.
/// Returns the length of a message record whose frame and CRC check out.
pub(crate) fn check_frame(bytes: &[u8], message_size_max_bytes: usize) -> Result<(u8, usize), String> {
    if bytes.len() < END_MARKER_BYTES {
        return Err(format!("only {} bytes left, too short for a record", bytes.len()));
    }
    let total = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let magic = u16::from_le_bytes(bytes[4..6].try_into().expect("2 bytes"));
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#06x}"));
    }
    if bytes[6] != VERSION {
        return Err(format!("unknown format version {}", bytes[6]));
    }
    match bytes[7] {
        KIND_END_OF_SEGMENT => {
            if total != bytes.len() {
                return Err(format!("end-of-segment marker says {total} bytes but {} remain", bytes.len()));
            }
            Ok((KIND_END_OF_SEGMENT, total))
        }
        KIND_MESSAGE => {
            if total < RECORD_BYTES_MIN || total > message_size_max_bytes || total > bytes.len() {
                return Err(format!("record length {total} out of range"));
            }
            let stored = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
            let actual = crc32c(&bytes[12..total]);
            if stored != actual {
                return Err(format!("CRC mismatch: stored {stored:#010x}, computed {actual:#010x}"));
            }
            Ok((KIND_MESSAGE, total))
        }
        kind => Err(format!("unknown record kind {kind}")),
    }
}

/// Decodes the record at the start of `bytes[range]` (which runs to the end of its segment,
/// or of its published part), which must claim to be at `physical_offset`. The record's text
/// and body are slices of `bytes` (taken from it directly: no slice per record in between).
pub(crate) fn decode(
    bytes: &Bytes,
    range: std::ops::Range<usize>,
    physical_offset: u64,
    message_size_max_bytes: usize,
) -> Decoded {
    let start = range.start;
    let (kind, total) = match check_frame(&bytes[range], message_size_max_bytes) {
        Ok(frame) => frame,
        Err(reason) => return Decoded::Invalid(reason),
    };
    if kind == KIND_END_OF_SEGMENT {
        return Decoded::EndOfSegment;
    }
    match decode_message(bytes, start..start + total) {
        Ok(record) if record.physical_offset == physical_offset => Decoded::Message(record),
        Ok(record) => Decoded::Invalid(format!(
            "record claims physical offset {} but sits at {physical_offset}",
            record.physical_offset
        )),
        Err(reason) => Decoded::Invalid(reason),
    }
}

/// Decodes the message record at `bytes[range]`, whose frame and CRC were already checked.
fn decode_message(shared: &Bytes, range: std::ops::Range<usize>) -> Result<MessageRecord, String> {
    let bytes = &shared[range];
    let mut reader = Reader { buf: bytes, pos: 12 };
    let flags = reader.u32()?;
    let queue_id = reader.u32()?;
    let queue_offset = reader.u64()?;
    let physical_offset = reader.u64()?;
    let born_timestamp_ms = reader.u64()? as i64;
    let store_timestamp_ms = reader.u64()? as i64;
    let ip_bytes: [u8; 16] = reader.bytes(16)?.try_into().expect("16 bytes");
    let ip = Ipv6Addr::from(ip_bytes);
    let ip = match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    };
    let port = reader.u16()?;
    let reconsume_count = reader.u32()?;
    let prepared_transaction_offset = reader.u64()?;
    let topic_len = reader.u8()? as usize;
    let topic =
        ByteStr::from_utf8(shared.slice_ref(reader.bytes(topic_len)?)).map_err(|_| "topic is not UTF-8".to_string())?;
    let properties_len = reader.u16()? as usize;
    let properties = reader.bytes(properties_len).map_err(|_| "properties overrun the record".to_string())?;
    let properties = Properties::parse(shared.slice_ref(properties))?;
    let body_len = reader.u32()? as usize;
    let body = shared.slice_ref(reader.bytes(body_len)?);
    if reader.pos != bytes.len() {
        return Err(format!("record has {} trailing bytes", bytes.len() - reader.pos));
    }
    Ok(MessageRecord {
        topic,
        queue_id,
        queue_offset,
        physical_offset,
        size_bytes: bytes.len() as u32,
        flags,
        born_timestamp_ms,
        store_timestamp_ms,
        born_host: SocketAddr::new(ip, port),
        reconsume_count,
        prepared_transaction_offset,
        properties,
        body,
    })
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn put_bytes(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    fn put_u8(&mut self, value: u8) {
        self.put_bytes(&[value]);
    }
    fn put_u16(&mut self, value: u16) {
        self.put_bytes(&value.to_le_bytes());
    }
    fn put_u32(&mut self, value: u32) {
        self.put_bytes(&value.to_le_bytes());
    }
    fn put_u64(&mut self, value: u64) {
        self.put_bytes(&value.to_le_bytes());
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(len).filter(|end| *end <= self.buf.len());
        let end = end.ok_or_else(|| format!("field of {len} bytes overruns the record"))?;
        let slice = &self.buf[self.pos..end];
        self.pos = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.bytes(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body_len: usize) -> NewMessage {
        NewMessage {
            topic: "orders".into(),
            queue_id: 3,
            flags: 0,
            born_timestamp_ms: 1_700_000_000_000,
            born_host: "10.1.2.3:4567".parse().unwrap(),
            reconsume_count: 2,
            prepared_transaction_offset: 0,
            properties: vec![(PROPERTY_TAGS.into(), "TagA".into()), ("k".into(), "v".into())],
            body: vec![7; body_len],
        }
    }

    /// `message` encoded as placed at `queue_offset` / `physical_offset`.
    fn encoded(message: &NewMessage, queue_offset: u64, physical_offset: u64) -> Vec<u8> {
        let placement = Placement { queue_offset, physical_offset, store_timestamp_ms: 5 };
        let mut buf = vec![0; message.encoded_len()];
        encode_into(message, placement, &mut buf);
        buf
    }

    #[test]
    fn round_trip_and_crc_detects_flips() {
        let message = sample(100);
        let buf = Bytes::from(encoded(&message, 9, 4096));
        let Decoded::Message(record) = decode(&buf, 0..buf.len(), 4096, 1 << 20) else { panic!("decodes") };
        assert_eq!(record.topic, "orders");
        assert_eq!(record.queue_offset, 9);
        assert_eq!(record.tag(), Some("TagA"));
        assert_eq!(record.body, message.body);
        assert_eq!(record.born_host, message.born_host);
        let properties: Vec<(&str, &str)> = record.properties.iter().collect();
        assert_eq!(properties, [(PROPERTY_TAGS, "TagA"), ("k", "v")]);
        assert_eq!(record.body.as_ptr(), buf[buf.len() - 100..].as_ptr(), "the body is not copied");
        assert!(matches!(decode(&buf, 0..buf.len(), 4097, 1 << 20), Decoded::Invalid(_)));
        for position in [0, 5, 9, 20, 90, buf.len() - 1] {
            let mut flipped = buf.to_vec();
            flipped[position] ^= 0x40;
            assert!(
                matches!(decode(&Bytes::from(flipped.clone()), 0..flipped.len(), 4096, 1 << 20), Decoded::Invalid(_)),
                "{position}"
            );
        }
    }

    #[test]
    fn properties_that_are_not_utf8_or_overrun_their_block_are_invalid_even_with_a_good_crc() {
        let message = sample(10);
        let good = encoded(&message, 0, 0);
        let properties_at = HEADER_FIXED_BYTES + message.topic.len() + 2;
        // (byte to change, its new value, what the decoder says)
        let cases = [(properties_at + 2, 0xFF, "not UTF-8"), (properties_at, 0xFF, "overruns")];
        for (position, value, reason) in cases {
            let mut bad = good.clone();
            bad[position] = value;
            let crc = crc32c(&bad[12..]);
            bad[8..12].copy_from_slice(&crc.to_le_bytes());
            match decode(&Bytes::from(bad.clone()), 0..bad.len(), 0, 1 << 20) {
                Decoded::Invalid(message) => assert!(message.contains(reason), "{message}"),
                other => panic!("byte {position}: {other:?}"),
            }
        }
    }

    #[test]
    fn limits_are_enforced() {
        let message = sample(2000);
        assert!(matches!(message.validate(1000), Err(Error::MessageTooLarge { .. })));
        let mut message = sample(1);
        message.properties.push(("big".into(), "x".repeat(40_000)));
        assert!(matches!(message.validate(1 << 20), Err(Error::PropertiesTooLarge { .. })));
    }
}

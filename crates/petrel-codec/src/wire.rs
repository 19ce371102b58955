//! Primitive data types of 1.5: integers, variable byte integers, strings and
//! binary data, as nom parsers over a frozen frame and as writers into a buffer.

use bytes::{BufMut, Bytes, BytesMut};
use nom::bytes::complete::take;
use nom::number::complete::be_u16;
use nom::IResult;

use crate::error::{DecodeError, EncodeError};
use crate::string::{MqttString, StringError, TopicFilter};

/// The nom error type of the body parsers: a [`DecodeError`], with nom's own
/// "ran out of input" mapped to [`DecodeError::Truncated`] (the frame is whole,
/// so running out means a field claims more than the packet holds).
#[derive(Debug)]
pub(crate) struct PErr(pub(crate) DecodeError);

impl<'a> nom::error::ParseError<&'a [u8]> for PErr {
    fn from_error_kind(_: &'a [u8], _: nom::error::ErrorKind) -> Self {
        Self(DecodeError::Truncated)
    }
    fn append(_: &'a [u8], _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }
}

pub(crate) type PResult<'a, T> = IResult<&'a [u8], T, PErr>;

/// Fail the parse with a typed error.
pub(crate) fn fail<'a, T>(e: impl Into<DecodeError>) -> PResult<'a, T> {
    Err(nom::Err::Failure(PErr(e.into())))
}

/// A parser's error as the crate's.
#[inline]
pub(crate) fn into_error(e: nom::Err<PErr>) -> DecodeError {
    match e {
        nom::Err::Error(e) | nom::Err::Failure(e) => e.0,
        nom::Err::Incomplete(_) => DecodeError::Truncated,
    }
}

/// Unwrap a parser result into the crate's error.
#[inline(always)]
pub(crate) fn finish<T>(r: PResult<'_, T>) -> Result<T, DecodeError> {
    match r {
        Ok((rest, _)) if !rest.is_empty() => Err(DecodeError::TrailingBytes(rest.len())),
        Ok((_, v)) => Ok(v),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(e.0),
        Err(nom::Err::Incomplete(_)) => Err(DecodeError::Truncated),
    }
}

/// The largest value a Variable Byte Integer can hold (1.5.5).
pub const MAX_VARINT: u32 = 268_435_455;

/// A Variable Byte Integer (1.5.5), at most four bytes.
pub(crate) fn varint(input: &[u8]) -> PResult<'_, u32> {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&b) = input.get(i) else {
            return fail(DecodeError::Truncated);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // [MQTT-1.5.5-1]: the fewest bytes; a final zero byte means
            // the encoding was padded. (Refused, since what we decode we may
            // forward byte for byte.)
            if i > 0 && b == 0 {
                return fail(DecodeError::NonMinimalVarint);
            }
            return Ok((&input[i + 1..], value));
        }
    }
    fail(DecodeError::MalformedRemainingLength)
}

/// Bytes a whole packet takes on the wire: its first byte, the Remaining
/// Length (a Variable Byte Integer) and the `remaining` bytes it counts.
pub(crate) fn packet_len(remaining: usize) -> usize {
    1 + varint_len(remaining as u32) + remaining
}

/// Bytes a Variable Byte Integer takes on the wire.
pub(crate) fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Write a Variable Byte Integer into `out` (at least four bytes long);
/// returns the bytes written.
#[inline]
pub(crate) fn write_varint(out: &mut [u8], mut value: u32) -> usize {
    let mut i = 0;
    loop {
        let mut b = (value & 0x7F) as u8;
        value >>= 7;
        if value != 0 {
            b |= 0x80;
        }
        out[i] = b;
        i += 1;
        if value == 0 {
            return i;
        }
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut value: u32) {
    loop {
        let mut b = (value & 0x7F) as u8;
        value >>= 7;
        if value != 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if value == 0 {
            return;
        }
    }
}

/// A two-byte length prefix and that many bytes.
#[inline]
pub(crate) fn length_prefixed(input: &[u8]) -> PResult<'_, &[u8]> {
    let (input, len) = be_u16(input)?;
    take(len)(input)
}

/// Parsers that hand out `Bytes` views of the frame they run over.
#[derive(Clone, Copy)]
pub(crate) struct Frame<'f> {
    pub(crate) bytes: &'f Bytes,
}

impl<'f> Frame<'f> {
    /// A shared view of `sub`, which must lie inside the frame.
    pub(crate) fn slice(self, sub: &[u8]) -> Bytes {
        self.bytes.slice_ref(sub)
    }

    pub(crate) fn binary(self, input: &'f [u8]) -> PResult<'f, Bytes> {
        let (input, data) = length_prefixed(input)?;
        Ok((input, self.slice(data)))
    }

    /// A topic filter, validated in one pass where it can be.
    #[inline]
    pub(crate) fn topic_filter(self, input: &'f [u8]) -> PResult<'f, TopicFilter> {
        let (input, data) = length_prefixed(input)?;
        match TopicFilter::from_wire(self.slice(data)) {
            Ok(s) => Ok((input, s)),
            Err(e) => fail(e),
        }
    }

    pub(crate) fn string(self, input: &'f [u8]) -> PResult<'f, MqttString> {
        let (input, data) = length_prefixed(input)?;
        match MqttString::from_bytes(self.slice(data)) {
            Ok(s) => Ok((input, s)),
            Err(e) => fail(e),
        }
    }
}

/// Bytes a string or binary field takes, length prefix included.
pub(crate) fn binary_len(data: &[u8]) -> Result<usize, EncodeError> {
    if data.len() > usize::from(u16::MAX) {
        return Err(EncodeError::FieldTooLong);
    }
    Ok(2 + data.len())
}

/// Strings are at most 65,535 bytes by construction ([`StringError::TooLong`]).
pub(crate) fn string_len(s: &MqttString) -> usize {
    2 + s.len()
}

pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

pub(crate) fn put_string(buf: &mut BytesMut, s: &MqttString) {
    put_binary(buf, s.as_bytes());
}

impl From<StringError> for PErr {
    fn from(e: StringError) -> Self {
        Self(e.into())
    }
}

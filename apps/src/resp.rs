//! The Redis protocol (RESP2): a bounded, incremental request parser and a reply encoder, no heap.
//!
//! # Parsing
//!
//! [`parse`] takes the bytes a connection has received so far and answers one of: not enough
//! bytes yet ([`Parsed::Incomplete`]), one command ([`Parsed::Command`]: its arguments as
//! `(start, len)` ranges into the input, and how many bytes it took), bytes that hold no command
//! ([`Parsed::Empty`]: `*0`, `*-1` and blank inline lines, which Redis skips), or a
//! [`ParseError`]. It keeps no state between calls: the caller appends what arrives, calls again,
//! and drops the `consumed` bytes of each command it executes. A call costs O(arguments) for
//! arrays (bulk payloads are skipped by their length, never scanned) and O(line) for inline
//! commands, both bounded by [`Limits`] and the argument capacity `N`.
//!
//! Two request forms are accepted, as Redis does (`processMultibulkBuffer`,
//! `processInlineBuffer`), told apart by the first byte:
//! - `*` starts an array of bulk strings: `*<n>\r\n` then `n` times `$<len>\r\n<len bytes>\r\n`
//!   (what `redis-cli`, `redis-benchmark` and every client library send). A count of zero or
//!   below is skipped, as Redis does.
//! - anything else is an inline command: one line ended by `\n` (an `\r` before it is dropped),
//!   split on white space (`PING\r\n`, `SET k v\r\n`, what telnet users type). As in Redis's
//!   `sdssplitargs`, a NUL ends the line's arguments, an argument may be a whole `"..."` or `'...'`
//!   word (the closing quote followed by white space or the end of the line, else
//!   [`ParseError::UnbalancedQuotes`]), and an unclosed quote is an error. Unlike Redis, escapes
//!   inside quotes (`\n`, `\x41`, `\'`) and quotes inside a word (`a"b c"`) are refused with
//!   [`ParseError::Malformed`]: an argument is a range of the input, and those forms would need
//!   a rewritten copy. Clients that need arbitrary bytes send arrays.
//!
//! Numbers (`*<n>`, `$<len>`) follow Redis's `string2ll`: an optional `-`, then decimal digits
//! with no leading zero (`0` itself aside), no `+`, no spaces, within `i64`. Where Redis only
//! skips two bytes after a bulk payload and assumes an `\n` after each `\r`, this parser checks
//! for `\r\n` and answers [`ParseError::Malformed`] otherwise: no client sends anything else, and
//! a desynchronised stream is better closed than read on.
//!
//! # After an error
//!
//! Every [`ParseError`] is final for the connection: the server answers
//! [`ParseError::write_reply`] (Redis's `-ERR Protocol error: ...` text) and closes it. A bad
//! length or count means no later byte can be trusted to start a command, so there is nothing to
//! resynchronise on; Redis does the same (`setProtocolError` sets `CLIENT_CLOSE_AFTER_REPLY`),
//! including for its own limits (an array over the argument limit, a bulk over
//! `proto-max-bulk-len`, an inline line over 64 KiB), which are [`ParseError::TooManyArgs`],
//! [`ParseError::BulkTooLong`] and [`ParseError::InlineTooLong`] here.
//!
//! # Encoding
//!
//! [`Writer`] appends replies (simple string, error, integer, bulk, null bulk, array header,
//! null array) and whole commands (arrays of bulk strings) to a caller's buffer. A value that does
//! not fit writes nothing and answers [`EncodeError::NoRoom`] with the bytes it needed. The free
//! functions ([`simple`], [`error`], [`integer`], [`bulk`], [`null_bulk`], [`array_header`],
//! [`command`]) write one item at the start of a buffer and return its length.
//!
//! # Invariants
//! - `parse` never panics and never reads past its input; every range it returns lies within
//!   the input, below `consumed`, and `consumed <= input.len()`.
//! - Prefix stability: for any input, `parse` on a prefix answers either `Incomplete` or exactly
//!   what it answers on the whole input. So feeding bytes one at a time, or in any split, gives
//!   the same commands and the same errors as feeding them at once.
//! - `Incomplete` is only answered when more bytes could still complete a command within the
//!   limits: an input that is longer than any accepted command gets an error, never `Incomplete`
//!   forever.
//! - What the encoder writes for a command, `parse` reads back as the same arguments, consuming
//!   exactly the bytes written.
//! - The encoder writes all of an item or none of it.

use core::fmt;

/// Longest inline line Redis accepts (`PROTO_INLINE_MAX_SIZE`).
pub const REDIS_INLINE_MAX: usize = 64 * 1024;
/// Longest bulk string Redis accepts by default (`proto-max-bulk-len`, 512 MiB).
pub const REDIS_BULK_MAX: usize = 512 * 1024 * 1024;

/// Bounds on what one request may hold (the argument count is the parser's `N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Limits {
    /// Longest bulk string payload, in bytes.
    pub bulk_max: usize,
    /// Longest inline line, its `\n` included.
    pub inline_max: usize,
}

impl Limits {
    /// Redis's own limits.
    pub const REDIS: Limits = Limits {
        bulk_max: REDIS_BULK_MAX,
        inline_max: REDIS_INLINE_MAX,
    };
}

/// The arguments of one command: `(start, len)` ranges into the parsed input, at most `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Args<const N: usize> {
    ranges: [(usize, usize); N],
    len: usize,
}

impl<const N: usize> Default for Args<N> {
    fn default() -> Self {
        Args {
            ranges: [(0, 0); N],
            len: 0,
        }
    }
}

impl<const N: usize> Args<N> {
    /// How many arguments (the command name included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The `(start, len)` range of each argument in the input.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges[..self.len]
    }

    /// Argument `i` as bytes of `input` (the input it was parsed from); `None` past the last or
    /// when `input` is too short.
    pub fn get<'i>(&self, i: usize, input: &'i [u8]) -> Option<&'i [u8]> {
        let &(start, len) = self.ranges().get(i)?;
        input.get(start..start.checked_add(len)?)
    }

    /// The arguments as bytes of `input` (the input they were parsed from; an argument beyond
    /// a shorter `input` reads as empty).
    pub fn iter<'s, 'i: 's>(
        &'s self,
        input: &'i [u8],
    ) -> impl Iterator<Item = &'i [u8]> + Clone + 's {
        (0..self.len).map(move |i| self.get(i, input).unwrap_or(&[]))
    }

    fn push(&mut self, start: usize, len: usize) -> Result<(), ParseError> {
        let slot = self
            .ranges
            .get_mut(self.len)
            .ok_or(ParseError::TooManyArgs { max: N })?;
        *slot = (start, len);
        self.len += 1;
        Ok(())
    }
}

/// What the received bytes hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<const N: usize> {
    /// Not a whole command yet: call again when more bytes arrive.
    Incomplete,
    /// One command, in the first `consumed` bytes.
    Command {
        /// Its arguments, the command name first (at least one).
        args: Args<N>,
        /// Bytes it took: drop them before parsing the next.
        consumed: usize,
    },
    /// The first `consumed` bytes hold nothing to execute (`*0\r\n`, `*-1\r\n`, a blank inline
    /// line): drop them, reply nothing, as Redis does.
    Empty {
        /// Bytes to drop.
        consumed: usize,
    },
}

/// Why the received bytes are not a request. Every one ends the connection (see the module doc):
/// reply [`ParseError::write_reply`], then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ParseError {
    /// More arguments than the parser holds (Redis: `invalid multibulk length`).
    TooManyArgs {
        /// The parser's capacity.
        max: usize,
    },
    /// A bulk string over [`Limits::bulk_max`] (Redis: `invalid bulk length`).
    BulkTooLong {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// An inline line with no `\n` within [`Limits::inline_max`] bytes (Redis: `too big inline
    /// request`).
    InlineTooLong {
        /// The limit.
        max: usize,
    },
    /// The count after `*` is not a number (Redis: `invalid multibulk length`).
    InvalidMultibulkLength,
    /// The length after `$` is not a number, or is negative (Redis: `invalid bulk length`).
    InvalidBulkLength,
    /// An array element does not start with `$` (Redis: `expected '$', got 'X'`).
    ExpectedBulk {
        /// The byte found instead.
        got: u8,
    },
    /// An inline quote is not closed, or is closed but followed by more of the word (Redis:
    /// `unbalanced quotes in request`).
    UnbalancedQuotes,
    /// Anything else that is not a request.
    Malformed {
        /// What was wrong.
        why: &'static str,
    },
}

impl ParseError {
    /// The text after `ERR Protocol error: `, as Redis words it where Redis has the case.
    pub fn message(&self) -> &'static str {
        match self {
            ParseError::TooManyArgs { .. } | ParseError::InvalidMultibulkLength => {
                "invalid multibulk length"
            }
            ParseError::BulkTooLong { .. } | ParseError::InvalidBulkLength => "invalid bulk length",
            ParseError::InlineTooLong { .. } => "too big inline request",
            ParseError::ExpectedBulk { .. } => "expected '$'",
            ParseError::UnbalancedQuotes => "unbalanced quotes in request",
            ParseError::Malformed { why } => why,
        }
    }

    /// Writes the reply Redis sends before closing, `-ERR Protocol error: <message>\r\n`
    /// (`expected '$', got 'X'` for [`ParseError::ExpectedBulk`], with a byte that is not
    /// printable ASCII shown as `?` so the reply stays one line); returns its length.
    pub fn write_reply(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let mut writer = Writer::new(out);
        let mut shown = [b'?'];
        let (first, second, third): (&[u8], &[u8], &[u8]) = match self {
            ParseError::ExpectedBulk { got } => {
                if got.is_ascii_graphic() || *got == b' ' {
                    shown[0] = *got;
                }
                (b"expected '$', got '", &shown, b"'")
            }
            _ => (self.message().as_bytes(), b"", b""),
        };
        writer.pieces(&[b"-ERR Protocol error: ", first, second, third, b"\r\n"])?;
        Ok(writer.len())
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::ExpectedBulk { got } => write!(f, "expected '$', got byte {got}"),
            ParseError::BulkTooLong { len, max } => {
                write!(f, "bulk of {len} bytes over the limit of {max}")
            }
            ParseError::TooManyArgs { max } => write!(f, "more than {max} arguments"),
            _ => f.write_str(self.message()),
        }
    }
}

/// Parses the first request in `input` (see the module doc): at most `N` arguments, within
/// `limits`.
pub fn parse<const N: usize>(input: &[u8], limits: &Limits) -> Result<Parsed<N>, ParseError> {
    let parsed = match input.first() {
        None => Parsed::Incomplete,
        Some(b'*') => parse_array(input, limits)?,
        Some(_) => parse_inline(input, limits)?,
    };
    match &parsed {
        Parsed::Command { args, consumed } => {
            assert!(*consumed > 0 && *consumed <= input.len());
            assert!(!args.is_empty() && args.len() <= N);
            for &(start, len) in args.ranges() {
                assert!(start + len <= *consumed);
            }
        }
        Parsed::Empty { consumed } => assert!(*consumed > 0 && *consumed <= input.len()),
        Parsed::Incomplete => {}
    }
    Ok(parsed)
}

/// Reads a `string2ll` number ended by `\r\n` at `*at`, moving `*at` past it; `None` when the
/// input ends first.
fn number(input: &[u8], at: &mut usize, invalid: ParseError) -> Result<Option<i64>, ParseError> {
    let mut i = *at;
    let negative = input.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let first = i;
    let mut magnitude: u64 = 0;
    loop {
        let Some(&byte) = input.get(i) else {
            return Ok(None);
        };
        match byte {
            b'0'..=b'9' => {
                // A leading zero is only the number zero itself.
                if i > first && input[first] == b'0' {
                    return Err(invalid);
                }
                magnitude = magnitude
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(u64::from(byte - b'0')))
                    .filter(|&m| m <= i64::MAX as u64 + u64::from(negative))
                    .ok_or(invalid)?;
            }
            b'\r' if i > first => break,
            _ => return Err(invalid),
        }
        i += 1;
    }
    match input.get(i + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => {
            return Err(ParseError::Malformed {
                why: "expected '\\n' after '\\r'",
            })
        }
    }
    // -0 is refused by string2ll.
    if negative && magnitude == 0 {
        return Err(invalid);
    }
    *at = i + 2;
    let value = if negative {
        0i64.wrapping_sub_unsigned(magnitude)
    } else {
        magnitude as i64
    };
    debug_assert_eq!(value < 0, negative);
    Ok(Some(value))
}

fn parse_array<const N: usize>(input: &[u8], limits: &Limits) -> Result<Parsed<N>, ParseError> {
    debug_assert_eq!(input[0], b'*');
    let mut at = 1;
    let Some(count) = number(input, &mut at, ParseError::InvalidMultibulkLength)? else {
        return Ok(Parsed::Incomplete);
    };
    if count <= 0 {
        return Ok(Parsed::Empty { consumed: at });
    }
    if count as u64 > N as u64 {
        return Err(ParseError::TooManyArgs { max: N });
    }
    let mut args = Args::default();
    for _ in 0..count {
        match input.get(at) {
            None => return Ok(Parsed::Incomplete),
            Some(b'$') => at += 1,
            Some(&got) => return Err(ParseError::ExpectedBulk { got }),
        }
        let Some(len) = number(input, &mut at, ParseError::InvalidBulkLength)? else {
            return Ok(Parsed::Incomplete);
        };
        if len < 0 {
            return Err(ParseError::InvalidBulkLength);
        }
        if len as u64 > limits.bulk_max as u64 {
            return Err(ParseError::BulkTooLong {
                len: len as u64,
                max: limits.bulk_max,
            });
        }
        let len = len as usize;
        // `len <= bulk_max`, a usize: the sums below cannot overflow for any input that fits
        // in memory, but the checks keep that from being an assumption.
        let Some(end) = at.checked_add(len).filter(|&end| end < usize::MAX - 2) else {
            return Err(ParseError::InvalidBulkLength);
        };
        match (input.get(end), input.get(end + 1)) {
            (Some(b'\r'), Some(b'\n')) => {}
            (None, _) | (Some(b'\r'), None) => return Ok(Parsed::Incomplete),
            _ => {
                return Err(ParseError::Malformed {
                    why: "bulk string not followed by CRLF",
                })
            }
        }
        args.push(at, len)?;
        at = end + 2;
    }
    Ok(Parsed::Command { args, consumed: at })
}

/// White space as C's `isspace` sees it: what `sdssplitargs` skips between arguments.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn parse_inline<const N: usize>(input: &[u8], limits: &Limits) -> Result<Parsed<N>, ParseError> {
    let scanned = &input[..input.len().min(limits.inline_max)];
    let Some(newline) = scanned.iter().position(|&b| b == b'\n') else {
        if input.len() >= limits.inline_max {
            return Err(ParseError::InlineTooLong {
                max: limits.inline_max,
            });
        }
        return Ok(Parsed::Incomplete);
    };
    let consumed = newline + 1;
    let mut end = newline;
    if end > 0 && input[end - 1] == b'\r' {
        end -= 1;
    }
    // sdssplitargs reads a C string: nothing after a NUL is seen.
    if let Some(nul) = input[..end].iter().position(|&b| b == 0) {
        end = nul;
    }
    let line = &input[..end];
    let mut args = Args::default();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        let Some(&first) = line.get(i) else {
            break;
        };
        if first == b'"' || first == b'\'' {
            let start = i + 1;
            let mut j = start;
            loop {
                match line.get(j) {
                    None => return Err(ParseError::UnbalancedQuotes),
                    Some(b'\\') if first == b'"' || line.get(j + 1) == Some(&b'\'') => {
                        return Err(ParseError::Malformed {
                            why: "escapes in inline quotes are not supported, send an array",
                        })
                    }
                    Some(&b) if b == first => break,
                    Some(_) => j += 1,
                }
            }
            if line.get(j + 1).is_some_and(|&b| !is_space(b)) {
                return Err(ParseError::UnbalancedQuotes);
            }
            args.push(start, j - start)?;
            i = j + 1;
        } else {
            let start = i;
            while let Some(&b) = line.get(i) {
                match b {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' | b'\'' => {
                        return Err(ParseError::Malformed {
                            why: "quotes inside an inline word are not supported, send an array",
                        })
                    }
                    _ => i += 1,
                }
            }
            args.push(start, i - start)?;
        }
    }
    if args.is_empty() {
        return Ok(Parsed::Empty { consumed });
    }
    Ok(Parsed::Command { args, consumed })
}

// ---- encoding ------------------------------------------------------------------------------

/// Why a reply was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum EncodeError {
    /// The buffer has `room` bytes left; the item needs `needed`. Nothing was written.
    NoRoom {
        /// Bytes the item needs.
        needed: usize,
        /// Bytes left in the buffer.
        room: usize,
    },
    /// A simple string or error line holds `\r` or `\n`, which would end it early. Nothing was
    /// written.
    LineBreak,
}

/// Decimal digits of `value` at the end of `buf`; returns where they start.
fn digits(mut value: u64, buf: &mut [u8; 20]) -> usize {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return at;
        }
    }
}

/// Appends RESP items to a caller's buffer, each whole or not at all.
#[derive(Debug)]
pub struct Writer<'b> {
    out: &'b mut [u8],
    len: usize,
}

impl<'b> Writer<'b> {
    /// Writes from the start of `out`.
    pub fn new(out: &'b mut [u8]) -> Writer<'b> {
        Writer { out, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What was written so far.
    pub fn written(&self) -> &[u8] {
        &self.out[..self.len]
    }

    /// Forgets everything written after the first `len` bytes (to replace a reply that did not
    /// fit by an error).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends the concatenation of `pieces`, or nothing when it does not fit.
    fn pieces(&mut self, pieces: &[&[u8]]) -> Result<&mut Self, EncodeError> {
        let needed = pieces
            .iter()
            .map(|p| p.len())
            .fold(0usize, usize::saturating_add);
        let room = self.out.len() - self.len;
        if needed > room {
            return Err(EncodeError::NoRoom { needed, room });
        }
        for piece in pieces {
            self.out[self.len..self.len + piece.len()].copy_from_slice(piece);
            self.len += piece.len();
        }
        debug_assert!(self.len <= self.out.len());
        Ok(self)
    }

    fn line(&mut self, tag: u8, text: &[u8]) -> Result<&mut Self, EncodeError> {
        if text.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(EncodeError::LineBreak);
        }
        self.pieces(&[&[tag], text, b"\r\n"])
    }

    fn number(&mut self, tag: u8, value: i64) -> Result<&mut Self, EncodeError> {
        let mut buf = [0; 20];
        let at = digits(value.unsigned_abs(), &mut buf);
        let sign: &[u8] = if value < 0 { b"-" } else { b"" };
        self.pieces(&[&[tag], sign, &buf[at..], b"\r\n"])
    }

    /// `+<text>\r\n` (`text` without line breaks).
    pub fn simple(&mut self, text: &[u8]) -> Result<&mut Self, EncodeError> {
        self.line(b'+', text)
    }

    /// `-<text>\r\n` (`text` without line breaks, starting with its code: `ERR ...`).
    pub fn error(&mut self, text: &[u8]) -> Result<&mut Self, EncodeError> {
        self.line(b'-', text)
    }

    /// `-<parts...>\r\n`: an error line made of several pieces (none with line breaks).
    pub fn error_parts(&mut self, parts: &[&[u8]]) -> Result<&mut Self, EncodeError> {
        if parts
            .iter()
            .flat_map(|p| p.iter())
            .any(|&b| b == b'\r' || b == b'\n')
        {
            return Err(EncodeError::LineBreak);
        }
        let start = self.len;
        let needed = parts
            .iter()
            .map(|p| p.len())
            .fold(3usize, usize::saturating_add);
        let room = self.out.len() - self.len;
        if needed > room {
            return Err(EncodeError::NoRoom { needed, room });
        }
        self.pieces(&[b"-"])?;
        for part in parts {
            self.pieces(&[part])?;
        }
        self.pieces(&[b"\r\n"])?;
        debug_assert_eq!(self.len - start, needed);
        Ok(self)
    }

    /// `:<value>\r\n`.
    pub fn integer(&mut self, value: i64) -> Result<&mut Self, EncodeError> {
        self.number(b':', value)
    }

    /// `$<len>\r\n<bytes>\r\n`.
    pub fn bulk(&mut self, bytes: &[u8]) -> Result<&mut Self, EncodeError> {
        let mut buf = [0; 20];
        let at = digits(bytes.len() as u64, &mut buf);
        self.pieces(&[b"$", &buf[at..], b"\r\n", bytes, b"\r\n"])
    }

    /// `$-1\r\n`: the absent value.
    pub fn null_bulk(&mut self) -> Result<&mut Self, EncodeError> {
        self.pieces(&[b"$-1\r\n"])
    }

    /// `*<count>\r\n`: the `count` items that follow form an array.
    pub fn array_header(&mut self, count: usize) -> Result<&mut Self, EncodeError> {
        let mut buf = [0; 20];
        let at = digits(count as u64, &mut buf);
        self.pieces(&[b"*", &buf[at..], b"\r\n"])
    }

    /// `*-1\r\n`: the absent array.
    pub fn null_array(&mut self) -> Result<&mut Self, EncodeError> {
        self.pieces(&[b"*-1\r\n"])
    }

    /// A whole command as clients send it: an array of bulk strings. Written whole or not at
    /// all.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<&mut Self, EncodeError> {
        let needed = command_len(args);
        let room = self.out.len() - self.len;
        if needed > room {
            return Err(EncodeError::NoRoom { needed, room });
        }
        let start = self.len;
        self.array_header(args.len())?;
        for arg in args {
            self.bulk(arg)?;
        }
        debug_assert_eq!(self.len - start, command_len(args));
        Ok(self)
    }
}

/// Bytes [`Writer::command`] writes for `args`.
pub fn command_len(args: &[&[u8]]) -> usize {
    let header = |n: usize| 3 + (n.checked_ilog10().unwrap_or(0) as usize + 1);
    args.iter().fold(header(args.len()), |sum, arg| {
        sum.saturating_add(header(arg.len()) + arg.len() + 2)
    })
}

/// Writes `+<text>\r\n` at the start of `out`; returns its length.
pub fn simple(out: &mut [u8], text: &[u8]) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).simple(text)?.len())
}

/// Writes `-<text>\r\n` at the start of `out`; returns its length.
pub fn error(out: &mut [u8], text: &[u8]) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).error(text)?.len())
}

/// Writes `:<value>\r\n` at the start of `out`; returns its length.
pub fn integer(out: &mut [u8], value: i64) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).integer(value)?.len())
}

/// Writes `$<len>\r\n<bytes>\r\n` at the start of `out`; returns its length.
pub fn bulk(out: &mut [u8], bytes: &[u8]) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).bulk(bytes)?.len())
}

/// Writes `$-1\r\n` at the start of `out`; returns its length.
pub fn null_bulk(out: &mut [u8]) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).null_bulk()?.len())
}

/// Writes `*<count>\r\n` at the start of `out`; returns its length.
pub fn array_header(out: &mut [u8], count: usize) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).array_header(count)?.len())
}

/// Writes a command (an array of bulk strings) at the start of `out`; returns its length.
pub fn command(out: &mut [u8], args: &[&[u8]]) -> Result<usize, EncodeError> {
    Ok(Writer::new(out).command(args)?.len())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const N: usize = 8;
    const LIMITS: Limits = Limits {
        bulk_max: 64,
        inline_max: 48,
    };

    /// A deterministic xorshift generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// What `parse` answered, with the arguments copied out.
    #[derive(Clone, Debug, PartialEq)]
    enum Owned {
        Incomplete,
        Command(Vec<Vec<u8>>, usize),
        Empty(usize),
        Error(ParseError),
    }

    fn run(input: &[u8], limits: &Limits) -> Owned {
        match parse::<N>(input, limits) {
            Ok(Parsed::Incomplete) => Owned::Incomplete,
            Ok(Parsed::Command { args, consumed }) => {
                Owned::Command(args.iter(input).map(|a| a.to_vec()).collect(), consumed)
            }
            Ok(Parsed::Empty { consumed }) => Owned::Empty(consumed),
            Err(e) => Owned::Error(e),
        }
    }

    /// Feeds `stream` to a connection in pieces of the sizes `pieces` gives, as a server would:
    /// after each piece, takes every whole command from the front. Stops at the first error.
    fn feed(stream: &[u8], mut pieces: impl FnMut() -> usize) -> Vec<Owned> {
        let mut received = Vec::new();
        let mut events = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let n = pieces().clamp(1, stream.len() - at);
            received.extend_from_slice(&stream[at..at + n]);
            at += n;
            loop {
                match run(&received, &LIMITS) {
                    Owned::Incomplete => break,
                    Owned::Command(args, consumed) => {
                        received.drain(..consumed);
                        events.push(Owned::Command(args, consumed));
                    }
                    Owned::Empty(consumed) => {
                        received.drain(..consumed);
                        events.push(Owned::Empty(consumed));
                    }
                    error => {
                        events.push(error);
                        return events;
                    }
                }
            }
        }
        events
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = vec![0; command_len(args)];
        assert_eq!(command(&mut out, args), Ok(out.len()));
        out
    }

    fn random_args(rng: &mut Rng) -> Vec<Vec<u8>> {
        let count = 1 + rng.below(N);
        (0..count)
            .map(|_| {
                let len = [0, 1, 2, 9, 10, 63, 64][rng.below(7)];
                (0..len).map(|_| b"ab\r\n$*0 \"'"[rng.below(10)]).collect()
            })
            .collect()
    }

    #[test]
    fn command_round_trips() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let args = random_args(&mut rng);
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let bytes = encode(&refs);
            assert_eq!(
                run(&bytes, &LIMITS),
                Owned::Command(args.clone(), bytes.len())
            );
            // Every proper prefix is incomplete.
            for cut in 0..bytes.len() {
                assert_eq!(run(&bytes[..cut], &LIMITS), Owned::Incomplete, "{cut}");
            }
            // Too small a buffer: an error, nothing written.
            let mut short = vec![0xEE; bytes.len() - 1];
            assert_eq!(
                command(&mut short, &refs),
                Err(EncodeError::NoRoom {
                    needed: bytes.len(),
                    room: bytes.len() - 1
                })
            );
            assert!(short.iter().all(|&b| b == 0xEE));
        }
    }

    /// A pipeline of every request form, including empties.
    fn pipeline() -> (Vec<u8>, Vec<Owned>) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut push = |bytes: &[u8], event: Owned| {
            stream.extend_from_slice(bytes);
            expected.push(event);
        };
        let cmd = |args: &[&[u8]]| Owned::Command(args.iter().map(|a| a.to_vec()).collect(), 0);
        push(
            &encode(&[b"SET", b"k\r\n", b""]),
            cmd(&[b"SET", b"k\r\n", b""]),
        );
        push(b"PING\r\n", cmd(&[b"PING"]));
        push(b"*0\r\n", Owned::Empty(4));
        push(b"  get   'a b'  \"c\"\n", cmd(&[b"get", b"a b", b"c"]));
        push(b"\r\n", Owned::Empty(2));
        push(b"*-1\r\n", Owned::Empty(5));
        push(&encode(&[&[b'x'; 64]]), cmd(&[&[b'x'; 64]]));
        push(b"INCR\tn\x0bm\r\n", cmd(&[b"INCR", b"n\x0bm"]));
        push(b"echo a\0 ignored\r\n", cmd(&[b"echo", b"a"]));
        push(&encode(&[&b"MGET"[..]; N]), cmd(&[&b"MGET"[..]; N]));
        (stream, expected)
    }

    /// Compares events ignoring `consumed` of commands (it depends on the form).
    fn same_events(got: &[Owned], expected: &[Owned]) {
        let strip = |e: &Owned| match e {
            Owned::Command(args, _) => Owned::Command(args.clone(), 0),
            other => other.clone(),
        };
        let got: Vec<Owned> = got.iter().map(strip).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn pipelined_and_split_at_every_byte_boundary() {
        let (stream, expected) = pipeline();
        same_events(&feed(&stream, || stream.len()), &expected);
        same_events(&feed(&stream, || 1), &expected);
        // Split once at every boundary.
        for cut in 1..stream.len() {
            let mut first = true;
            let got = feed(&stream, || {
                let n = if first { cut } else { stream.len() };
                first = false;
                n
            });
            same_events(&got, &expected);
        }
        let mut rng = Rng(77);
        for _ in 0..200 {
            same_events(&feed(&stream, || 1 + rng.below(12)), &expected);
        }
    }

    #[test]
    fn errors_end_the_pipeline_wherever_the_split() {
        let (mut stream, mut expected) = pipeline();
        stream.extend_from_slice(b"*2\r\n$1\r\na\r\n:1\r\n");
        expected.push(Owned::Error(ParseError::ExpectedBulk { got: b':' }));
        stream.extend_from_slice(b"PING\r\n");
        for piece in [1, 2, 3, 1000] {
            same_events(&feed(&stream, || piece), &expected);
        }
    }

    #[test]
    fn table_of_requests() {
        use Owned::*;
        use ParseError::*;
        let cmd =
            |args: &[&[u8]], consumed| Command(args.iter().map(|a| a.to_vec()).collect(), consumed);
        let cases: &[(&[u8], Owned)] = &[
            (b"", Incomplete),
            (b"*", Incomplete),
            (b"*1\r", Incomplete),
            (b"*0\r\n", Empty(4)),
            (b"*-1\r\n", Empty(5)),
            (b"*-9223372036854775808\r\n", Empty(23)),
            (b"*-9223372036854775809\r\n", Error(InvalidMultibulkLength)),
            (b"*99999999999999999999\r\n", Error(InvalidMultibulkLength)),
            (b"*9\r\n", Error(TooManyArgs { max: N })),
            (b"*\r\n", Error(InvalidMultibulkLength)),
            (b"*01\r\n", Error(InvalidMultibulkLength)),
            (b"*+1\r\n", Error(InvalidMultibulkLength)),
            (b"*-0\r\n", Error(InvalidMultibulkLength)),
            (b"* 1\r\n", Error(InvalidMultibulkLength)),
            (b"*1x", Error(InvalidMultibulkLength)),
            (
                b"*1\rx",
                Error(Malformed {
                    why: "expected '\\n' after '\\r'",
                }),
            ),
            (b"*1\r\n", Incomplete),
            (b"*1\r\n:1\r\n", Error(ExpectedBulk { got: b':' })),
            (b"*1\r\n$-1\r\n", Error(InvalidBulkLength)),
            (b"*1\r\n$65\r\n", Error(BulkTooLong { len: 65, max: 64 })),
            (b"*1\r\n$3\r\nab", Incomplete),
            (b"*1\r\n$3\r\nabc\r", Incomplete),
            (
                b"*1\r\n$3\r\nabcX",
                Error(Malformed {
                    why: "bulk string not followed by CRLF",
                }),
            ),
            (
                b"*1\r\n$3\r\nabc\rX",
                Error(Malformed {
                    why: "bulk string not followed by CRLF",
                }),
            ),
            (b"*1\r\n$0\r\n\r\n", cmd(&[b""], 10)),
            (
                b"*2\r\n$1\r\na\r\n$2\r\nbc\r\nEXTRA",
                cmd(&[b"a", b"bc"], 19),
            ),
            (b"PING", Incomplete),
            (b"PING\n", cmd(&[b"PING"], 5)),
            (b"PING\r\n", cmd(&[b"PING"], 6)),
            (b"\n", Empty(1)),
            (b" \t\r\n", Empty(4)),
            (b"a\rb\n", cmd(&[b"a", b"b"], 4)),
            (b"\0 set a\r\n", Empty(9)),
            (
                b"set 'a\"b' \"c'd\"\r\n",
                cmd(&[b"set", b"a\"b", b"c'd"], 17),
            ),
            (b"set 'a\\b'\r\n", cmd(&[b"set", b"a\\b"], 11)),
            (b"set '' \"\"\r\n", cmd(&[b"set", b"", b""], 11)),
            (b"set \"a\r\n", Error(UnbalancedQuotes)),
            (b"set \"a\"b\r\n", Error(UnbalancedQuotes)),
            (
                b"set 'a\\'b'\r\n",
                Error(Malformed {
                    why: "escapes in inline quotes are not supported, send an array",
                }),
            ),
            (
                b"set \"a\\nb\"\r\n",
                Error(Malformed {
                    why: "escapes in inline quotes are not supported, send an array",
                }),
            ),
            (
                b"set a\"b c\"\r\n",
                Error(Malformed {
                    why: "quotes inside an inline word are not supported, send an array",
                }),
            ),
            (
                b"a b c d e f g h\n",
                cmd(&[b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"], 16),
            ),
            (b"a b c d e f g h i\n", Error(TooManyArgs { max: N })),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &run(input, &LIMITS),
                expected,
                "{:?}",
                std::string::String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn limits_at_their_edges() {
        let bulk = [b'v'; 64];
        let bytes = encode(&[&bulk]);
        assert_eq!(
            run(&bytes, &LIMITS),
            Owned::Command(vec![bulk.to_vec()], bytes.len())
        );
        let tighter = Limits {
            bulk_max: 63,
            ..LIMITS
        };
        assert_eq!(
            run(&bytes, &tighter),
            Owned::Error(ParseError::BulkTooLong { len: 64, max: 63 })
        );
        // An inline line of exactly inline_max bytes, its newline included.
        let mut line = vec![b'x'; LIMITS.inline_max - 1];
        line.push(b'\n');
        assert_eq!(
            run(&line, &LIMITS),
            Owned::Command(vec![line[..47].to_vec()], 48)
        );
        line.insert(0, b'y');
        assert_eq!(
            run(&line, &LIMITS),
            Owned::Error(ParseError::InlineTooLong { max: 48 })
        );
        assert_eq!(run(&line[..47], &LIMITS), Owned::Incomplete);
        assert_eq!(
            run(&line[..48], &LIMITS),
            Owned::Error(ParseError::InlineTooLong { max: 48 })
        );
        // Redis's own limits take what clients send.
        let big = vec![7u8; 100_000];
        let bytes = encode(&[b"SET", b"k", &big]);
        assert!(matches!(
            parse::<3>(&bytes, &Limits::REDIS),
            Ok(Parsed::Command { consumed, .. }) if consumed == bytes.len()
        ));
        assert_eq!(
            parse::<2>(&bytes, &Limits::REDIS),
            Err(ParseError::TooManyArgs { max: 2 })
        );
    }

    #[test]
    fn protocol_error_replies() {
        let mut out = [0u8; 128];
        let cases: &[(ParseError, &[u8])] = &[
            (
                ParseError::ExpectedBulk { got: b':' },
                b"-ERR Protocol error: expected '$', got ':'\r\n",
            ),
            (
                ParseError::ExpectedBulk { got: b'\n' },
                b"-ERR Protocol error: expected '$', got '?'\r\n",
            ),
            (
                ParseError::InvalidMultibulkLength,
                b"-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                ParseError::TooManyArgs { max: 3 },
                b"-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                ParseError::BulkTooLong { len: 9, max: 3 },
                b"-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                ParseError::InlineTooLong { max: 3 },
                b"-ERR Protocol error: too big inline request\r\n",
            ),
            (
                ParseError::UnbalancedQuotes,
                b"-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
        ];
        for (error, text) in cases {
            let len = error.write_reply(&mut out).unwrap();
            assert_eq!(&out[..len], *text);
            assert!(error.write_reply(&mut out[..len - 1]).is_err());
        }
    }

    #[test]
    fn encoder_exact_bytes_and_no_room() {
        let mut out = [0u8; 64];
        let check = |len: Result<usize, EncodeError>, out: &[u8], text: &[u8]| {
            assert_eq!(&out[..len.unwrap()], text);
        };
        check(simple(&mut out, b"OK"), &out, b"+OK\r\n");
        check(
            error(&mut out, b"ERR syntax error"),
            &out,
            b"-ERR syntax error\r\n",
        );
        let mut writer = Writer::new(&mut out);
        writer.error_parts(&[b"ERR a '", b"get", b"' b"]).unwrap();
        assert_eq!(writer.written(), b"-ERR a 'get' b\r\n");
        assert_eq!(
            writer.error_parts(&[b"x\n"]).err(),
            Some(EncodeError::LineBreak)
        );
        assert_eq!(
            Writer::new(&mut out[..5]).error_parts(&[b"ab", b"c"]).err(),
            Some(EncodeError::NoRoom { needed: 6, room: 5 })
        );
        check(integer(&mut out, 0), &out, b":0\r\n");
        check(integer(&mut out, -12), &out, b":-12\r\n");
        check(
            integer(&mut out, i64::MIN),
            &out,
            b":-9223372036854775808\r\n",
        );
        check(
            integer(&mut out, i64::MAX),
            &out,
            b":9223372036854775807\r\n",
        );
        check(bulk(&mut out, b""), &out, b"$0\r\n\r\n");
        check(bulk(&mut out, b"a\r\nb"), &out, b"$4\r\na\r\nb\r\n");
        check(null_bulk(&mut out), &out, b"$-1\r\n");
        check(array_header(&mut out, 10), &out, b"*10\r\n");
        check(
            command(&mut out, &[b"GET", b"k"]),
            &out,
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        );
        assert_eq!(simple(&mut out, b"a\rb"), Err(EncodeError::LineBreak));
        assert_eq!(error(&mut out, b"a\nb"), Err(EncodeError::LineBreak));
        let mut small = [0u8; 4];
        assert_eq!(
            integer(&mut small, 1000),
            Err(EncodeError::NoRoom { needed: 7, room: 4 })
        );
        assert_eq!(small, [0; 4]);
        let mut writer = Writer::new(&mut out);
        writer
            .array_header(2)
            .unwrap()
            .bulk(b"x")
            .unwrap()
            .null_bulk()
            .unwrap();
        assert_eq!(writer.written(), b"*2\r\n$1\r\nx\r\n$-1\r\n");
        writer.null_array().unwrap();
        writer.truncate(4);
        assert_eq!(writer.written(), b"*2\r\n");
        for count in [0, 9, 10, 99, 100, 12345] {
            let args = vec![&b"ab"[..]; count.min(20)];
            let mut out = vec![0; 400];
            assert_eq!(command(&mut out, &args), Ok(command_len(&args)));
        }
    }

    /// Random and mutated inputs: no panic, results within bounds, and every prefix answers
    /// `Incomplete` or what the whole input answers.
    #[test]
    fn fuzzed_inputs_never_panic_and_prefixes_agree() {
        let mut rng = Rng(0xDEAD_BEEF_1234_5678);
        let (stream, _) = pipeline();
        for round in 0..4000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = rng.below(80);
                let alphabet = b"*$-0123456789\r\n \"'\\:ab\0";
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            } else {
                let mut bytes = stream.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
                bytes.truncate(rng.below(bytes.len() + 1));
                bytes
            };
            let limits = Limits {
                bulk_max: rng.below(70),
                inline_max: rng.below(70),
            };
            let whole = run(&input, &limits);
            if let Owned::Command(_, consumed) | Owned::Empty(consumed) = whole {
                assert!(consumed <= input.len());
            }
            for cut in 0..input.len() {
                let part = run(&input[..cut], &limits);
                assert!(
                    part == Owned::Incomplete || part == whole,
                    "{cut} {part:?} {whole:?}"
                );
            }
            // A dropped command leaves the rest parseable without panic.
            if let Owned::Command(_, consumed) | Owned::Empty(consumed) = whole {
                let _ = run(&input[consumed..], &limits);
            }
        }
    }
}

//! An incremental Server-Sent Events parser for Marathon's `/v2/events` stream.
//!
//! It follows the WHATWG "event stream interpretation" rules: lines end in CRLF, LF or CR; a line
//! starting with `:` is a comment (Marathon's keep-alives); `field: value` lines set `event`,
//! `data` (several `data:` lines are joined with `\n`), `id` and `retry`; a blank line dispatches
//! the event. Bytes arrive in arbitrary chunks, so a line, a CRLF pair or a multi-byte UTF-8
//! character may be split between two chunks: the parser keeps the partial line as bytes and
//! decodes it only once the line is complete.
//!
//! Hand-written (rather than a crate) because it is small, and because Marathon needs nothing
//! beyond the spec while the few SSE crates either pull a parser-combinator stack or are
//! unmaintained (see `l7-and-ecosystem.md` §5).

/// The largest line or event (data of all its lines) accepted, in bytes. An `api_post_event`
/// carries a whole app definition, so this is generous; it only guards against a peer that never
/// sends a line end.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty when the event had none (the spec's default type `message`).
    pub event: String,
    /// The `data:` lines joined with `\n` (no trailing newline).
    pub data: String,
    /// The last `id:` seen on the stream so far (sticky across events, as the spec says).
    pub id: Option<String>,
}

/// Errors of the SSE parser.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// A line or an event's data grew beyond the limit without a line end / blank line.
    #[error("SSE event or line longer than {limit} bytes (a peer that never ends its lines?)")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
}

/// The incremental parser. Feed it byte chunks as they arrive; it returns the events completed
/// by each chunk.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next chunk belongs to that CRLF.
    after_cr: bool,
    /// Nothing has been read yet: a leading UTF-8 BOM is skipped.
    at_start: bool,
    /// Bytes of a possible BOM seen at the very start, while fewer than three have arrived.
    bom_prefix: Vec<u8>,
    event: String,
    data: String,
    /// Whether a `data:` field was seen for the current event (the data may be empty).
    has_data: bool,
    last_id: Option<String>,
    retry_ms: Option<u64>,
    max_bytes: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser accepting lines and events up to `max_bytes` long.
    pub fn new(max_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            bom_prefix: Vec::new(),
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            retry_ms: None,
            max_bytes,
        }
    }

    /// The reconnection delay the server asked for with a `retry:` field, if any.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Feeds one chunk and returns the events it completed, in order. After an error the
    /// parser's state is undefined: drop it with the connection.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        if self.at_start {
            // Hold back the first bytes until we know whether they are a BOM.
            while self.at_start && !chunk.is_empty() {
                self.bom_prefix.push(chunk[0]);
                chunk = &chunk[1..];
                if !BOM.starts_with(&self.bom_prefix) {
                    self.at_start = false;
                    let held = std::mem::take(&mut self.bom_prefix);
                    self.feed_bytes(&held, &mut out)?;
                } else if self.bom_prefix.len() == BOM.len() {
                    self.at_start = false;
                    self.bom_prefix.clear();
                }
            }
        }
        self.feed_bytes(chunk, &mut out)?;
        Ok(out)
    }

    fn feed_bytes(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(pos) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_line_bytes(&chunk[..pos])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
            let terminator = chunk[pos];
            chunk = &chunk[pos + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push_line_bytes(chunk)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_bytes {
            return Err(SseError::TooLong {
                limit: self.max_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // comment / keep-alive
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        // Invalid UTF-8 is replaced, as the spec's decoder does; the JSON layer reports it if it
        // lands inside a document.
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_bytes {
                    return Err(SseError::TooLong {
                        limit: self.max_bytes,
                    });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {} // unknown fields are ignored
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            return; // an event without data is not dispatched; its type is reset
        }
        self.has_data = false;
        out.push(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.feed(c).expect("valid stream"));
        }
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    /// A stream exercising every feature: Marathon's attach event, a comment keep-alive, CRLF,
    /// CR-only and LF line ends, multi-line data, an id, a field without a colon, a non-ASCII
    /// character, and an event with no data (not dispatched).
    const RICH: &[u8] = b"\xEF\xBB\xBFevent: event_stream_attached\r\n\
data: {\"eventType\":\"event_stream_attached\",\"remoteAddress\":\"127.0.0.1\"}\r\n\
\r\n\
:keep-alive\n\
\n\
event: status_update_event\r\
data: {\"eventType\":\"status_update_event\",\r\
data:  \"appId\":\"/caf\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"}\r\
id: 7\r\
\r\
event: lonely\n\
\n\
data\n\
event:x\n\
\n";

    fn rich_expected() -> Vec<SseEvent> {
        vec![
            ev(
                "event_stream_attached",
                "{\"eventType\":\"event_stream_attached\",\"remoteAddress\":\"127.0.0.1\"}",
            ),
            SseEvent {
                event: "status_update_event".into(),
                data: "{\"eventType\":\"status_update_event\",\n \"appId\":\"/caf\u{e9}\u{20ac}\u{1f600}\"}"
                    .into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: "x".into(),
                data: String::new(),
                id: Some("7".into()),
            },
        ]
    }

    #[test]
    fn parses_a_whole_stream_in_one_chunk() {
        assert_eq!(parse_all(&[RICH]), rich_expected());
    }

    #[test]
    fn split_at_every_byte_position_gives_the_same_events() {
        let expected = rich_expected();
        for i in 0..=RICH.len() {
            let (a, b) = RICH.split_at(i);
            assert_eq!(parse_all(&[a, b]), expected, "split at byte {i}");
        }
    }

    #[test]
    fn split_at_every_pair_of_positions_gives_the_same_events() {
        let expected = rich_expected();
        for i in 0..=RICH.len() {
            for j in i..=RICH.len() {
                let chunks = [&RICH[..i], &RICH[i..j], &RICH[j..]];
                assert_eq!(parse_all(&chunks), expected, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let chunks: Vec<&[u8]> = RICH.chunks(1).collect();
        assert_eq!(parse_all(&chunks), rich_expected());
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        // If the LF after a chunk-final CR were a second line end, the blank line would
        // dispatch "a" alone and "b" would be a separate event.
        let got = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(got, vec![ev("", "a\nb")]);
    }

    #[test]
    fn cr_cr_is_a_blank_line() {
        assert_eq!(parse_all(&[b"data: a\r\r"]), vec![ev("", "a")]);
        assert_eq!(parse_all(&[b"data: a\r", b"\r"]), vec![ev("", "a")]);
    }

    #[test]
    fn incomplete_event_is_not_dispatched() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: e\ndata: {\"a\":1}\n").unwrap().is_empty());
        assert_eq!(p.feed(b"\n").unwrap(), vec![ev("e", "{\"a\":1}")]);
    }

    #[test]
    fn only_one_leading_space_is_stripped_and_colons_in_values_are_kept() {
        assert_eq!(
            parse_all(&[b"data:  two spaces: kept\n\n"]),
            vec![ev("", " two spaces: kept")]
        );
        assert_eq!(parse_all(&[b"data:nospace\n\n"]), vec![ev("", "nospace")]);
    }

    #[test]
    fn event_type_resets_after_dispatch() {
        let got = parse_all(&[b"event: a\ndata: 1\n\ndata: 2\n\n"]);
        assert_eq!(got, vec![ev("a", "1"), ev("", "2")]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let got = parse_all(&[b": ping\nfoo: bar\ndata: x\n: another\n\n"]);
        assert_eq!(got, vec![ev("", "x")]);
    }

    #[test]
    fn id_with_nul_is_ignored_and_retry_is_recorded() {
        let mut p = SseParser::default();
        let got = p
            .feed(b"id: a\0b\nretry: 2500\nretry: x\ndata: d\n\n")
            .unwrap();
        assert_eq!(got, vec![ev("", "d")]);
        assert_eq!(p.retry_ms(), Some(2500));
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let got = parse_all(&[b"data: a\xFFb\n\n"]);
        assert_eq!(got, vec![ev("", "a\u{fffd}b")]);
    }

    #[test]
    fn bom_only_at_the_start_is_skipped() {
        // A BOM prefix that turns out not to be one is kept as data.
        assert_eq!(
            parse_all(&[b"\xEF\xBB", b"\xBFdata: a\n\n"]),
            vec![ev("", "a")]
        );
        let got = parse_all(&[b"\xEFdata: a\n\n"]);
        assert_eq!(got, vec![]); // field name "\u{fffd}data" is unknown
        let got = parse_all(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(
            got.len(),
            1,
            "a BOM later in the stream is not skipped: {got:?}"
        );
    }

    #[test]
    fn endless_line_is_an_error() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456").unwrap().is_empty());
        assert_eq!(p.feed(b"789abcdef"), Err(SseError::TooLong { limit: 16 }));
    }

    #[test]
    fn endless_event_is_an_error() {
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 01234567\n").unwrap().is_empty());
        assert_eq!(
            p.feed(b"data: 01234567\n"),
            Err(SseError::TooLong { limit: 16 })
        );
    }
}

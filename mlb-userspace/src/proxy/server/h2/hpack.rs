//! Response header blocks (RFC 7541), written without a dynamic table: every field a literal
//! "without indexing", its name an index into the static table where it has one, strings not
//! Huffman-coded. The block is a little longer than a table-using encoder's, but costs a few
//! comparisons and a copy per field, where looking fields up in (and evicting from) a dynamic
//! table costs hashing each one; HAProxy encodes responses the same way. Nothing a client's
//! table holds changes, so no state is shared between responses.
//!
//! Request blocks are decoded by [`super::decoder`].

/// `:status`'s static-table entries (§A): a full match is one byte.
fn status_index(status: u16) -> Option<u8> {
    Some(match status {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => return None,
    })
}

/// The static-table index of a (lower-case) response header name, if it has one (§A).
fn name_index(name: &[u8]) -> Option<u8> {
    Some(match name {
        b"accept-ranges" => 18,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"date" => 33,
        b"etag" => 34,
        b"expires" => 36,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"proxy-authenticate" => 48,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// Appends `value` as an integer with an `bits`-bit prefix, the prefix's byte starting with
/// `first` (§5.1).
fn integer(dst: &mut Vec<u8>, first: u8, bits: u32, value: usize) {
    let max = (1usize << bits) - 1;
    if value < max {
        dst.push(first | value as u8);
        return;
    }
    dst.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        dst.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    dst.push(rest as u8);
}

/// Appends a string literal, not Huffman-coded (§5.2).
fn string(dst: &mut Vec<u8>, s: &[u8]) {
    integer(dst, 0, 7, s.len());
    dst.extend_from_slice(s);
}

/// Appends the `:status` field.
pub(super) fn status(dst: &mut Vec<u8>, status: u16) {
    if let Some(index) = status_index(status) {
        // Indexed field (§6.1).
        dst.push(0x80 | index);
        return;
    }
    // Literal without indexing, the name `:status` (index 8).
    integer(dst, 0, 4, 8);
    let digits = [
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    string(dst, &digits);
}

/// Appends a header field (a lower-case name). `sensitive`: "never indexed" (§6.2.3), so
/// that no proxy further on puts it in a table either.
pub(super) fn field(dst: &mut Vec<u8>, name: &[u8], value: &[u8], sensitive: bool) {
    let first = if sensitive { 0x10 } else { 0x00 };
    if let Some(index) = name_index(name) {
        integer(dst, first, 4, usize::from(index));
    } else {
        dst.push(first);
        string(dst, name);
    }
    string(dst, value);
}

/// Appends a `date` field of now (IMF-fixdate: 29 bytes).
pub(super) fn date(dst: &mut Vec<u8>) {
    integer(dst, 0, 4, 33);
    integer(dst, 0, 7, 29);
    let start = dst.len();
    super::super::date::extend(dst);
    debug_assert_eq!(dst.len() - start, 29);
}

/// The fields of a block, decoded as a client would (for tests).
#[cfg(test)]
pub(super) fn decoded(block: &[u8]) -> Vec<(String, String)> {
    let mut decoder = loona_hpack::Decoder::new();
    let mut out = Vec::new();
    decoder
        .decode_with_cb(block, |n, v| {
            out.push((
                String::from_utf8_lossy(&n).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        })
        .expect("a valid block");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_decodes_to_the_fields_written() {
        let mut block = Vec::new();
        status(&mut block, 200);
        field(&mut block, b"content-type", b"text/html", false);
        field(&mut block, b"x-served-by", b"mlb", false);
        field(&mut block, b"set-cookie", b"id=1", true);
        let long = "v".repeat(300);
        field(&mut block, b"x-long", long.as_bytes(), false);
        let fields = decoded(&block);
        let want = [
            (":status", "200"),
            ("content-type", "text/html"),
            ("x-served-by", "mlb"),
            ("set-cookie", "id=1"),
            ("x-long", long.as_str()),
        ];
        let got: Vec<(&str, &str)> = fields
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_status_decodes_to_its_digits() {
        for code in [
            100, 200, 201, 204, 206, 301, 304, 400, 404, 431, 500, 503, 599,
        ] {
            let mut block = Vec::new();
            status(&mut block, code);
            assert_eq!(
                decoded(&block),
                [(":status".to_string(), code.to_string())],
                "{code}"
            );
        }
    }

    #[test]
    fn integers_past_the_prefix_continue_in_seven_bit_groups() {
        // RFC 7541 §C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        out.clear();
        integer(&mut out, 0x80, 7, 126);
        assert_eq!(out, [0x80 | 126]);
    }
}

//! The `date` header of responses, formatted at most once a second per thread (as hyper does).
use std::{
    cell::RefCell,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
const DATE_LEN: usize = 29;

struct Cached {
    /// Whole seconds since the epoch the text is for.
    secs: u64,
    text: [u8; DATE_LEN],
}

thread_local! {
    static CACHED: RefCell<Cached> = const {
        RefCell::new(Cached { secs: u64::MAX, text: [0; DATE_LEN] })
    };
}

/// Appends today's HTTP date (RFC 9110 IMF-fixdate) to `dst`.
pub(super) fn extend(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|cached| {
        if cached.secs != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if text.len() == DATE_LEN {
                cached.text.copy_from_slice(text.as_bytes());
                cached.secs = secs;
            }
        }
        dst.extend_from_slice(&cached.text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_http_date_of_now() {
        let mut out = Vec::new();
        extend(&mut out);
        let text = std::str::from_utf8(&out).expect("ascii");
        let date = httpdate::parse_http_date(text).expect("an HTTP date");
        let off = SystemTime::now()
            .duration_since(date)
            .expect("not in the future");
        assert!(off < Duration::from_secs(2), "{text}");
    }
}

//! The relay's HTTP/1.1 pieces on arbitrary bytes: the response-head parser
//! (no panic, the head stays within the input, parsing exactly the head gives
//! the same result), the head rewrites (no panic; a response head keeps its
//! end and says close), and the chunked decoder (no panic, never claims more bytes than it
//! got, and the same data and verdict however the input is split).
#![no_main]

use baton_proto::http::{
    parse_response_head, response_head_with_close, upstream_request_head, ChunkedDecoder,
};
use libfuzzer_sys::fuzz_target;

/// Data and verdict of decoding `parts` in order.
fn decode(parts: &[&[u8]]) -> (Vec<u8>, Option<usize>, bool) {
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut used = 0;
    for part in parts {
        match d.feed(part, |c| data.extend_from_slice(c)) {
            Ok(p) => {
                assert!(p.used <= part.len(), "used more than given");
                used += p.used;
                if p.done {
                    return (data, Some(used), true);
                }
            }
            Err(_) => return (data, None, false),
        }
    }
    (data, Some(used), false)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(head)) = parse_response_head(data) {
        assert!(head.head_len <= data.len());
        let exact = data.get(..head.head_len).expect("head_len within input");
        assert_eq!(parse_response_head(exact), Ok(Some(head.clone())));
        for head_request in [false, true] {
            let _ = head.framing(head_request);
        }
        let mut out = Vec::new();
        response_head_with_close(exact, &mut out);
        assert!(out.ends_with(b"\n"), "the head's end is kept");
        assert!(
            out.windows(19).any(|w| w == b"Connection: close\r\n"),
            "the close is said"
        );
    }
    let mut out = Vec::new();
    let _ = upstream_request_head(data, &mut out);

    let whole = decode(&[data]);
    let cut = usize::from(data.first().copied().unwrap_or(0)) % (data.len() + 1);
    let (a, b) = data.split_at(cut);
    let split = decode(&[a, b]);
    if whole.1.is_some() && split.1.is_some() {
        assert_eq!(whole, split, "split at {cut}");
    } else {
        // An error may come at the same byte either way; the data before it
        // must agree.
        assert_eq!(whole.1.is_some(), split.1.is_some(), "split at {cut}");
    }
});

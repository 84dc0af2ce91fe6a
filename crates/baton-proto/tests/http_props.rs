//! Property tests of the request-head parser: no panics on arbitrary bytes,
//! and incremental parsing agrees with parsing the whole head at once.

use baton_proto::http::{parse_request_head, HeadLimits};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

/// Valid request heads with a mix of routing-relevant headers.
fn valid_head() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        Just("GET".to_owned()),
        Just("POST".to_owned()),
        "[A-Z]{1,8}"
    ];
    let path = "/[a-zA-Z0-9._~/%-]{0,40}(\\?[a-z0-9=&]{0,20})?";
    let host = "[a-z0-9-]{1,20}(\\.[a-z]{2,6})?(:[0-9]{1,5})?";
    let framing = prop_oneof![
        Just(String::new()),
        (0u64..1_000_000).prop_map(|n| format!("Content-Length: {n}\r\n")),
        Just("Transfer-Encoding: chunked\r\n".to_owned()),
    ];
    let connection = prop_oneof![
        Just(String::new()),
        Just("Connection: close\r\n".to_owned()),
        Just("Connection: keep-alive\r\n".to_owned()),
    ];
    let extra = proptest::collection::vec((token(), "[ -~]{0,30}"), 0..6);
    (method, path, host, framing, connection, extra).prop_map(|(m, p, h, f, c, extra)| {
        let mut head = format!("{m} {p} HTTP/1.1\r\nHost: {h}\r\n{f}{c}");
        for (name, value) in extra {
            // Keep the generated headers from changing the framing.
            let name = format!("X-{name}");
            head.push_str(&format!("{name}: {}\r\n", value.trim()));
        }
        head.push_str("\r\n");
        head
    })
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        for limits in [HeadLimits::default(), HeadLimits { max_bytes: 64, max_headers: 2 }] {
            if let Ok(Some(head)) = parse_request_head(&bytes, &limits) {
                prop_assert!(head.head_len <= bytes.len().min(limits.max_bytes));
            }
        }
    }

    #[test]
    fn never_panics_on_near_valid_heads(head in valid_head(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = head.into_bytes();
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = parse_request_head(&bytes, &HeadLimits::default());
    }

    #[test]
    fn every_split_needs_more_then_gives_the_same_head(head in valid_head(), body in "[ -~]{0,16}") {
        let limits = HeadLimits::default();
        let full = format!("{head}{body}");
        let parsed = parse_request_head(full.as_bytes(), &limits);
        let Ok(Some(expected)) = parsed else {
            return Err(TestCaseError::fail(format!("{head:?} did not parse: {parsed:?}")));
        };
        prop_assert_eq!(expected.head_len, head.len());
        for cut in 0..head.len() {
            prop_assert_eq!(parse_request_head(&full.as_bytes()[..cut], &limits), Ok(None), "cut at {}", cut);
        }
        prop_assert_eq!(parse_request_head(head.as_bytes(), &limits), Ok(Some(expected)));
    }
}

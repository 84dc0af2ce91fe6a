//! The request-head parser on arbitrary bytes: no panic, the head length
//! stays within the input and the limit, and parsing exactly the head gives
//! the same result.
#![no_main]

use baton_proto::http::{parse_request_head, HeadLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limits in [
        HeadLimits::default(),
        HeadLimits {
            max_bytes: 128,
            max_headers: 4,
        },
    ] {
        if let Ok(Some(head)) = parse_request_head(data, &limits) {
            assert!(head.head_len <= data.len().min(limits.max_bytes));
            let exact = data.get(..head.head_len).expect("head_len within input");
            assert_eq!(parse_request_head(exact, &limits), Ok(Some(head)));
        }
    }
});

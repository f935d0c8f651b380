//! Fuzzes everything bunker-accounts decodes from its clients and from the
//! application's output: the command parser, the `serve` framing (a stream
//! of frames, then each frame as a response payload), and response JSON.
//! None may panic; a command that parses must print back to itself.
#![no_main]

use bunker_accounts::frame::{decode_response, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = bunker_accounts::parse(data) {
        let text = command.to_string();
        assert_eq!(bunker_accounts::parse(text.as_bytes()).ok(), Some(command));
    }
    let mut stream = data;
    while let Ok(Some(frame)) = read_frame(&mut stream, 1024) {
        assert!(frame.len() <= 1024);
        if let Ok((_, body)) = decode_response(&frame) {
            let _ = bunker_accounts::Response::from_json(body);
        }
    }
    let _ = bunker_accounts::Response::from_json(data);
});

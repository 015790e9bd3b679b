#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rocket_server_sessions::fuzzing::snapshot(data));

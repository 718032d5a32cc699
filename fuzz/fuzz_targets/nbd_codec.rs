#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_nbd::fuzzing::codec_messages(data));

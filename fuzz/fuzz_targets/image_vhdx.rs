#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::image(ferry::source::format::Format::Vhdx, data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_vsphere::fuzzing::soap_response(data));

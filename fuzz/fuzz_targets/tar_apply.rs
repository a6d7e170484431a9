#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stratafs::fuzzing::tar_apply(data));

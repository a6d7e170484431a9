#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stratafs::fuzzing::image_archive(data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cinder_fuzz::guarded(|| cinder_fuzz::gguf(data));
});

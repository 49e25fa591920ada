//! One HTTP request, as bytes from a client, through micro-http's parser, the API router and
//! the response mapping. Nothing may panic, and every answer must follow the API's rules.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    api_server::test_utils::fuzz_request(data);
});

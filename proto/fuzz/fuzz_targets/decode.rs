//! `decode` on arbitrary bytes: it must never panic, and anything it accepts
//! must re-encode to bytes that decode to the same message. (Not byte-equal:
//! bincode's varints accept non-minimal encodings, which `encode` normalises.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = muster_proto::decode(data) {
        let again = muster_proto::encode_version(&decoded.message, decoded.version)
            .expect("a decoded message re-encodes");
        assert!(again.len() <= data.len(), "re-encoding grew the message");
        let back = muster_proto::decode(&again).expect("a re-encoded message decodes");
        assert_eq!(back, decoded, "decode/encode/decode is not stable");
    }
});

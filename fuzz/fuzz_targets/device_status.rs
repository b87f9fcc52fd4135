//! The emulator's body validation: `validate_device_status` on arbitrary JSON, for both
//! API versions; input that is not JSON is tried as every property's value. Properties:
//! no panic; a non-object is one violation; every violation names a member pointer.
#![no_main]

use graphvcr::graph::{self, ApiVersion};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let value: Value = match serde_json::from_slice(data) {
        Ok(value) => value,
        Err(_) => {
            let text = String::from_utf8_lossy(data);
            let _ = graph::is_date_time_offset(&text);
            json!({
                "status": text,
                "lastReportedDateTime": text,
                "complianceGracePeriodExpirationDateTime": text,
                "userName": text,
                "@odata.type": text,
            })
        }
    };
    for version in [ApiVersion::V1, ApiVersion::Beta] {
        let violations = graph::validate_device_status(&value, version);
        if !value.is_object() {
            assert_eq!(violations.len(), 1);
        }
        for violation in &violations {
            assert!(value.is_object() == violation.pointer.starts_with('/'));
            let _ = violation.to_string();
        }
    }
});

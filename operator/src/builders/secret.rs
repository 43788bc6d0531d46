//! The bearer token of the workers' mutating admin endpoints. Created once with a random
//! token and then left alone: re-applying would rotate it under running workers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::ValidatedPipeline;

pub const TOKEN_KEY: &str = "token";

pub fn name(v: &ValidatedPipeline) -> String {
    format!("{}-admin", v.child_name())
}

/// A new Secret holding `token`.
pub fn build(v: &ValidatedPipeline, token: &str) -> Secret {
    Secret {
        metadata: v.metadata(name(v)),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token.to_string())])),
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    }
}

/// 32 random bytes from the kernel, hex-encoded.
pub fn random_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_long() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let s = build(&crate::builders::tests::example(), &a);
        assert_eq!(s.string_data.unwrap()[TOKEN_KEY], a);
    }
}

//! The SocialTalent edge: [`wire`] knows SCIM JSON, [`client`] sends it through the limiter.

pub mod client;
pub mod wire;
